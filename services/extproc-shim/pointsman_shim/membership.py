"""The shim's view of every pool's members: the endpoints it may route to.

Fed by the collectors' snapshots (only collectors may publish them: :mod:`pointsman.natsauth`)
and the config's static ``pools``; read by :func:`pointsman_shim.core.policy.vet_pick`, which
refuses a pick that names anything else. An address leaves the view, as it leaves the picker's,
when snapshots of its pool kept coming for ``shim.forget_after_s`` without naming it; while no
snapshot of the pool arrives at all (every collector gone) the last known members stay.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pointsman.bus import Received, ServiceBus
from pointsman.v1 import PoolSnapshot, routes


def static_pools(data: Mapping[str, Any]) -> dict[str, frozenset[str]]:
    """The config's top-level ``pools`` as pool -> addresses."""
    pools = data.get("pools") or {}
    out: dict[str, frozenset[str]] = {}
    if isinstance(pools, dict):
        for name, entries in pools.items():
            out[str(name)] = frozenset(
                str(e["address"]) if isinstance(e, dict) else str(e) for e in entries or ()
            )
    return out


class Membership:
    """Pool -> known endpoint addresses, kept current from snapshots."""

    def __init__(
        self,
        static: Mapping[str, frozenset[str]],
        forget_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._static = dict(static)
        self._seen: dict[str, dict[str, float]] = {}
        self._last: dict[str, float] = {}
        self._forget_after_s = forget_after_s
        self._clock = clock
        self._view: dict[str, frozenset[str]] = dict(self._static)
        self._next_sweep = 0.0

    def subscribe(self, bus: ServiceBus) -> None:
        bus.subscriber(routes.SNAPSHOTS)(self._on_snapshot)

    async def _on_snapshot(self, msg: Received[PoolSnapshot]) -> None:
        if msg.body is not None:
            self.apply(msg.body)

    def apply(self, snap: PoolSnapshot) -> None:
        now = self._clock()
        seen = self._seen.setdefault(snap.pool, {})
        self._last[snap.pool] = now
        added = False
        for endpoint in snap.endpoints:
            added |= endpoint.address not in seen
            seen[endpoint.address] = now
        if added:
            self._rebuild()

    def pools(self) -> Mapping[str, frozenset[str]]:
        """The current view (static pools merged with what snapshots named lately)."""
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + 1.0
            stale = False
            for pool, seen in self._seen.items():
                cutoff = self._last.get(pool, now) - self._forget_after_s
                for address in [a for a, t in seen.items() if t < cutoff]:
                    del seen[address]
                    stale = True
            if stale:
                self._rebuild()
        return self._view

    def _rebuild(self) -> None:
        view = dict(self._static)
        for pool, seen in self._seen.items():
            view[pool] = view.get(pool, frozenset()) | frozenset(seen)
        self._view = view
