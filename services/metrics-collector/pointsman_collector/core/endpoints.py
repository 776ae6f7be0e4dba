"""Endpoints and the static ``pools:`` shape that names them.

``pools`` maps a served model name to a list of entries, each either ``"ip:port"`` or
``{address, labels, engine}``. The same shape is read from the shared config's top level and from
``collector.static_file``; Kubernetes discovery produces the same :class:`Endpoint` values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


class PoolsError(ValueError):
    """A ``pools`` mapping is not in the documented shape."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One engine replica serving ``pool``. ``engine`` is None when it is to be detected."""

    pool: str
    address: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False, compare=True)
    engine: str | None = None

    @property
    def key(self) -> str:
        """Identity for sharding and state: the same address may serve two pools."""
        return f"{self.pool}|{self.address}"


def _address(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PoolsError(f"{where}: address must be a non-empty 'host:port' string")
    addr = value.strip()
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PoolsError(f"{where}: address {addr!r} is not 'host:port'")
    return addr


def parse_pools(data: object, source: str = "pools") -> list[Endpoint]:
    """Validate a ``pools`` mapping and flatten it; duplicates within one pool are kept once."""
    if data is None:
        return []
    if not isinstance(data, Mapping):
        raise PoolsError(f"{source} must map model names to lists of endpoints")
    out: dict[str, Endpoint] = {}
    for pool, entries in data.items():
        if not isinstance(pool, str) or not pool:
            raise PoolsError(f"{source}: pool names must be non-empty strings, got {pool!r}")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise PoolsError(f"{source}.{pool} must be a list of endpoints")
        for i, entry in enumerate(entries):
            where = f"{source}.{pool}[{i}]"
            labels: dict[str, str] = {}
            engine: str | None = None
            if isinstance(entry, Mapping):
                unknown = set(entry) - {"address", "labels", "engine"}
                if unknown:
                    raise PoolsError(f"{where}: unknown keys {sorted(unknown)}")
                addr = _address(entry.get("address"), where)
                raw_labels: Any = entry.get("labels") or {}
                if not isinstance(raw_labels, Mapping):
                    raise PoolsError(f"{where}.labels must be a mapping")
                labels = {str(k): str(v) for k, v in raw_labels.items()}
                raw_engine = entry.get("engine") or labels.get("engine")
                engine = str(raw_engine) if raw_engine else None
            else:
                addr = _address(entry, where)
            ep = Endpoint(pool=pool, address=addr, labels=labels, engine=engine)
            out.setdefault(ep.key, ep)
    return list(out.values())


def merge(*views: Iterable[Endpoint]) -> dict[str, Endpoint]:
    """Union of several discovery sources' views, keyed by :attr:`Endpoint.key` (first wins)."""
    out: dict[str, Endpoint] = {}
    for view in views:
        for ep in view:
            out.setdefault(ep.key, ep)
    return out
