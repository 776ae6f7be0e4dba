"""docs/metrics.md is generated from the services' metric definitions and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_metrics_table_is_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "metrics_table.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr + "\n(run: python docs/metrics_table.py)"
