"""Start real picker replicas (``python -m pointsman_picker``) against a real nats-server."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import procs

StartPicker = Callable[..., procs.Proc]


@pytest.fixture
def start_picker(nats_url: str, tmp_path: Path) -> Iterator[StartPicker]:
    """Start a picker replica with an extra ``picker`` section; ``proc.extra["port"]`` is its
    HTTP port."""
    started: list[procs.Proc] = []

    def start(
        picker: dict[str, Any] | None = None,
        replica_id: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> procs.Proc:
        port = procs.free_port()
        section = {"http_host": "127.0.0.1", "http_port": port, "warmup_ms": 0, **(picker or {})}
        if replica_id:
            section["replica_id"] = replica_id
        cfg = tmp_path / f"picker-{port}.yaml"
        cfg.write_text(
            yaml.safe_dump({"nats": {"url": nats_url}, "picker": section, **(extra or {})})
        )
        proc = procs.spawn(
            f"picker-{port}",
            [sys.executable, "-m", "pointsman_picker", "--config", str(cfg)],
            log_dir=tmp_path,
        )
        started.append(proc)
        procs.wait_until(
            lambda: procs.http_ok(f"http://127.0.0.1:{port}/readyz"), 30, "picker", proc
        )
        proc.extra["port"] = port
        return proc

    yield start
    for proc in started:
        with contextlib.suppress(Exception):
            proc.stop()
