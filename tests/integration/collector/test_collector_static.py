"""Static discovery files: both shapes, reload on change, a broken edit keeps the last view."""

from __future__ import annotations

from pathlib import Path

import pytest

from pointsman_collector.discovery.static import StaticFileSource

pytestmark = pytest.mark.integration


def test_reload_and_broken_edit(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("m:\n  - 10.0.0.1:8000\n")
    src = StaticFileSource(path, top_level_key=False, poll_s=0.1)
    first = src.load_once()
    assert first is not None and [e.address for e in first] == ["10.0.0.1:8000"]
    assert src.load_once() is None  # unchanged

    path.write_text("pools:\n  m:\n    - 10.0.0.1:8000\n    - 10.0.0.2:8000\n")  # wrapped shape
    second = src.load_once()
    assert second is not None and len(second) == 2

    path.write_text("m:\n  - not-an-address\n")
    assert src.load_once() is None  # broken: keep the last view

    path.unlink()
    assert src.load_once() == []  # gone: the file's endpoints go too


def test_config_file_pools_key(tmp_path: Path) -> None:
    path = tmp_path / "pointsman.yaml"
    path.write_text("nats: {url: x}\npools:\n  m: [10.0.0.1:8000]\ncollector: {}\n")
    src = StaticFileSource(path, top_level_key=True, poll_s=0.1)
    eps = src.load_once()
    assert eps is not None and [(e.pool, e.address) for e in eps] == [("m", "10.0.0.1:8000")]
