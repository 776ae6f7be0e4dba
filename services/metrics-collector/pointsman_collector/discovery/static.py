"""Static discovery: the config file's top-level ``pools:`` and ``collector.static_file``.

Both files are polled for changes (mtime, size and content hash; no inotify dependency) and
reloaded without a restart. A file that fails to parse keeps the previous view and logs why.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import yaml

from pointsman_collector.core.endpoints import Endpoint, PoolsError, parse_pools
from pointsman_collector.discovery import Report

log = logging.getLogger(__name__)


def _load(path: Path, top_level_key: bool) -> list[Endpoint]:
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    if top_level_key:
        pools = data.get("pools") if isinstance(data, dict) else None
        return parse_pools(pools, f"{path}: pools")
    if isinstance(data, dict) and set(data) == {"pools"}:
        data = data["pools"]
    return parse_pools(data, str(path))


class StaticFileSource:
    """Endpoints from one YAML file; ``top_level_key`` reads its ``pools:`` key (the config)."""

    def __init__(self, path: str | Path, *, top_level_key: bool, poll_s: float) -> None:
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self._top = top_level_key
        self._poll_s = poll_s
        self._digest: bytes | None = None
        self._stat: tuple[float, int] | None = None

    def load_once(self) -> list[Endpoint] | None:
        """The file's endpoints if it changed since the last call, else None."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            if self._digest != b"missing":
                log.warning("discovery file %s does not exist", self.path)
                self._digest = b"missing"
                self._stat = None
                return []
            return None
        stat_key = (st.st_mtime, st.st_size)
        if stat_key == self._stat:
            return None
        self._stat = stat_key
        raw = self.path.read_bytes()
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if digest == self._digest:
            return None
        try:
            endpoints = _load(self.path, self._top)
        except (PoolsError, yaml.YAMLError, OSError) as exc:
            log.error("discovery file %s not reloaded, keeping the last view: %s", self.path, exc)
            return None
        self._digest = digest
        return endpoints

    async def run(self, report: Report) -> None:
        while True:
            endpoints = self.load_once()
            if endpoints is not None:
                log.info("discovery %s: %d endpoints", self.name, len(endpoints))
                report(self.name, endpoints)
            await asyncio.sleep(self._poll_s)
