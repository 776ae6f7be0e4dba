"""Generated files that are committed (deploy/compose/envoy.yaml, the Istio local replies): the
script that renders one either rewrites it or, with ``--check`` (what the tests run), says it is
out of date, so a change to the renderer cannot leave a stale copy behind."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(output: Path, text: str, argv: list[str], script: str) -> int:
    """Rewrite ``output`` with ``text``; with ``--check`` in ``argv``, exit status 1 if it differs."""
    if "--check" in argv:
        current = output.read_text(encoding="utf-8") if output.exists() else ""
        if current != text:
            print(f"{output} is out of date: run python {script}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}")
    return 0
