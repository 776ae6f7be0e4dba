"""Per-endpoint scrape state and the pool snapshots built from it.

The state keeps the last *successful* reading apart from the last attempt: a failed scrape records
the error but keeps its last numbers and their time, so a consumer can tell "down since t" from
"never seen" and judge staleness itself. One slow or failed scrape does not make a serving replica
unhealthy (real vLLM under load answered ``/metrics`` in 300-600 ms): only ``unhealthy_after``
failures in a row do, or a refused connection (nothing listens: the replica is gone).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pointsman.v1 import EndpointMetrics, PoolSnapshot
from pointsman_collector.core.endpoints import Endpoint
from pointsman_collector.core.engines import Reading


@dataclass(slots=True)
class EndpointState:
    endpoint: Endpoint
    reading: Reading | None = None
    #: Unix time of the last successful scrape (0 = never).
    last_ok: float = 0.0
    #: Whether the last attempt succeeded; False until the first attempt ends.
    healthy: bool = False
    error: str | None = "not scraped yet"
    scrape_ms: float = 0.0
    attempts: int = 0
    #: The engine found on the page, reused until a page stops matching it.
    detected: str | None = None
    #: Failed attempts since the last success.
    failures: int = 0


def record_ok(state: EndpointState, reading: Reading, at: float, duration_ms: float) -> None:
    state.reading = reading
    state.detected = reading.engine
    state.last_ok = at
    state.healthy = True
    state.error = None
    state.scrape_ms = duration_ms
    state.attempts += 1
    state.failures = 0


#: The start of the error a refused (or otherwise failed) connection gives (see ``rawhttp``).
CONNECT_FAILED = "connect failed"


def record_error(
    state: EndpointState, error: str, duration_ms: float, unhealthy_after: int = 1
) -> None:
    """A failed attempt: unhealthy after ``unhealthy_after`` in a row, or at once when the
    connection failed (refused: nothing listens there)."""
    state.failures += 1
    if state.failures >= unhealthy_after or error.startswith(CONNECT_FAILED):
        state.healthy = False
    state.error = error
    state.scrape_ms = duration_ms
    state.attempts += 1


def endpoint_metrics(state: EndpointState, now: float, stale_s: float) -> EndpointMetrics:
    ep = state.endpoint
    r = state.reading
    engine = r.engine if r is not None else (ep.engine or "unknown")
    base = EndpointMetrics(
        address=ep.address,
        healthy=state.healthy,
        scraped_at=state.last_ok,
        labels=dict(ep.labels),
        engine=engine,
        error=state.error,
        stale=state.last_ok == 0.0 or now - state.last_ok > stale_s,
        scrape_ms=round(state.scrape_ms, 3),
    )
    if r is not None:
        base.waiting = r.waiting
        base.running = r.running
        base.kv_usage = r.kv_usage
        base.lora_running = list(r.lora_running)
        base.lora_waiting = list(r.lora_waiting)
        base.max_lora = r.max_lora
        base.block_size = r.block_size
        base.num_blocks = r.num_blocks
    return base


def build_snapshots(
    states: Iterable[EndpointState],
    *,
    collector: str,
    now: float,
    stale_s: float,
    members: list[str],
    interval_ms: int,
    pools: Iterable[str] = (),
) -> dict[str, PoolSnapshot]:
    """One snapshot per pool, endpoints sorted by address.

    An endpoint this replica has not tried yet is left out rather than published as "not
    scraped yet": right after a hand-over that would mark a healthy endpoint down for a tick in
    every picker, while the previous owner's last report is still good. Once tried, an endpoint
    is always in, healthy or not.

    ``pools`` names pools to publish even when this replica scrapes none of their endpoints (an
    empty snapshot tells consumers the replica holds nothing of that pool any more).
    """
    by_pool: dict[str, list[EndpointMetrics]] = {p: [] for p in pools}
    for state in states:
        eps = by_pool.setdefault(state.endpoint.pool, [])
        if state.attempts:
            eps.append(endpoint_metrics(state, now, stale_s))
    return {
        pool: PoolSnapshot(
            pool=pool,
            collector=collector,
            published_at=now,
            endpoints=sorted(eps, key=lambda e: e.address),
            members=members,
            interval_ms=interval_ms,
        )
        for pool, eps in by_pool.items()
    }


def split(snap: PoolSnapshot, parts: int) -> list[PoolSnapshot]:
    """A snapshot too big for one message, as ``parts`` snapshots of the same pool.

    Each part is published under its own collector name (``<id>_p<i>``), so a consumer that
    keeps the latest snapshot per (pool, collector) and takes the union needs no new rule.
    """
    parts = max(1, min(parts, len(snap.endpoints)))
    size = -(-len(snap.endpoints) // parts)
    return [
        PoolSnapshot(
            pool=snap.pool,
            collector=f"{snap.collector}_p{i}",
            published_at=snap.published_at,
            endpoints=snap.endpoints[i * size : (i + 1) * size],
            members=snap.members,
            interval_ms=snap.interval_ms,
        )
        for i in range(parts)
        if snap.endpoints[i * size : (i + 1) * size]
    ]
