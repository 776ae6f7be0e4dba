"""In-memory state of one picker replica: the latest metrics per endpoint and in-flight requests.

Kept in process memory so a pick never waits on I/O. Replicas share the parts that must agree
(in-flight assignments, prefix index, sessions) through :mod:`pointsman_picker.redis_state`,
which feeds remote updates into these same structures.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace

from pointsman.v1 import EndpointMetrics, PoolSnapshot
from pointsman_picker.core.framework import Assigned, PrefixStored, Session, SessionBound, Update
from pointsman_picker.core.prefix import PrefixIndex
from pointsman_picker.core.types import Endpoint


class PoolStore:
    """The newest metrics of every endpoint, per pool, merged over all collectors.

    Collector replicas split a pool's endpoints between them, so a snapshot updates the
    endpoints it names and leaves the others. An endpoint is dropped (it left the pool) when
    snapshots of its pool kept coming for ``forget_after_s`` without naming it; while no
    snapshot of the pool arrives at all (every collector gone), nothing is dropped: the picker
    keeps serving from the last known endpoints.
    """

    def __init__(self, forget_after_s: float = 300.0) -> None:
        self._pools: dict[str, dict[str, tuple[EndpointMetrics, float]]] = {}
        self._first_seen: dict[str, float] = {}
        self._last_snapshot: dict[str, float] = {}
        self._forget_after_s = forget_after_s

    def apply(self, snap: PoolSnapshot, now: float) -> None:
        pool = self._pools.setdefault(snap.pool, {})
        self._first_seen.setdefault(snap.pool, now)
        self._last_snapshot[snap.pool] = now
        for ep in snap.endpoints:
            old = pool.get(ep.address)
            # A snapshot that lost a race with a newer one must not roll metrics back.
            if old is not None and old[0].scraped_at > ep.scraped_at and ep.healthy:
                continue
            pool[ep.address] = (ep, now)

    def forget_old(self, now: float) -> list[tuple[str, str]]:
        """Drop endpoints that the pool's snapshots stopped naming ``forget_after_s`` ago;
        returns the (pool, address) dropped. Counted from the pool's last snapshot, not from
        ``now``, so a pool whose collectors are all gone keeps its endpoints."""
        dropped = []
        for name, pool in self._pools.items():
            last = self._last_snapshot.get(name, now)
            gone = [a for a, (_, seen) in pool.items() if last - seen > self._forget_after_s]
            for address in gone:
                del pool[address]
                dropped.append((name, address))
        return dropped

    def __contains__(self, pool: str) -> bool:
        return pool in self._pools

    def pools(self) -> Iterator[tuple[str, float, list[EndpointMetrics]]]:
        """(name, first seen, endpoints) of every pool known."""
        for name, eps in self._pools.items():
            yield name, self._first_seen[name], [m for m, _ in eps.values()]

    def metrics(self, pool: str) -> list[EndpointMetrics] | None:
        eps = self._pools.get(pool)
        return None if eps is None else [m for m, _ in eps.values()]


@dataclass(slots=True)
class _Assignment:
    pool: str
    endpoint: str
    at: float


class InFlight:
    """Requests assigned to endpoints and not yet completed.

    Released by completion events; an entry older than ``ttl_s`` is dropped so a lost event
    cannot leak load forever. Only assignments newer than an endpoint's last scrape count as
    ``pending`` (older ones are already in its metrics); the completions since that scrape of
    the older ones are ``freed`` (they left the load the scrape counted).
    """

    #: Completions remembered per endpoint for :meth:`freed` (the newest; a scrape comes every
    #: few tens of milliseconds, so only the last few matter).
    MAX_RELEASES = 1024

    def __init__(self, ttl_s: float = 300.0) -> None:
        self._ttl_s = ttl_s
        self._by_request: dict[str, _Assignment] = {}
        # Insertion-ordered (about time-ordered): pending() walks from the newest end.
        self._by_endpoint: dict[tuple[str, str], dict[str, float]] = {}
        #: (pool, endpoint) -> (completed at, assigned at) of the latest completions, oldest first.
        self._released: dict[tuple[str, str], deque[tuple[float, float]]] = {}

    def __len__(self) -> int:
        return len(self._by_request)

    def add(self, request_id: str, pool: str, endpoint: str, at: float) -> None:
        if request_id in self._by_request:
            return
        self._by_request[request_id] = _Assignment(pool, endpoint, at)
        self._by_endpoint.setdefault((pool, endpoint), {})[request_id] = at

    def release(self, request_id: str, at: float | None = None) -> bool:
        """Forget a request; ``at``: when it completed (remembered for :meth:`freed`; ``None``
        for one dropped without completing)."""
        entry = self._by_request.pop(request_id, None)
        if entry is None:
            return False
        key = (entry.pool, entry.endpoint)
        per = self._by_endpoint.get(key)
        if per is not None:
            per.pop(request_id, None)
            if not per:
                del self._by_endpoint[key]
        if at is not None:
            done = self._released.get(key)
            if done is None:
                done = self._released[key] = deque(maxlen=self.MAX_RELEASES)
            done.append((at, entry.at))
        return True

    def count(self, pool: str, endpoint: str) -> int:
        """Assignments to ``endpoint`` not yet completed."""
        return len(self._by_endpoint.get((pool, endpoint), ()))

    def pending(self, pool: str, endpoint: str, since: float) -> int:
        """Assignments to ``endpoint`` made after ``since`` (its last scrape)."""
        per = self._by_endpoint.get((pool, endpoint))
        if not per:
            return 0
        count = 0
        for at in reversed(per.values()):
            if at <= since:
                break
            count += 1
        return count

    def freed(self, pool: str, endpoint: str, since: float) -> int:
        """Requests assigned to ``endpoint`` up to ``since`` (its last scrape, so counted in its
        metrics) that completed after it: load the scrape counted and that has left since."""
        done = self._released.get((pool, endpoint))
        if not done:
            return 0
        while done and done[0][0] <= since:  # older than the scrape: never asked for again
            done.popleft()
        return sum(1 for _, assigned in done if assigned <= since)

    def forget_endpoint(self, pool: str, endpoint: str) -> None:
        self._released.pop((pool, endpoint), None)

    def expire(self, now: float) -> int:
        cutoff = now - self._ttl_s
        old = [rid for rid, a in self._by_request.items() if a.at < cutoff]
        for rid in old:
            self.release(rid)
        return len(old)


def endpoint_view(m: EndpointMetrics, pending: int, freed: int = 0) -> Endpoint:
    """The core's frozen view of an endpoint's metrics plus its pending assignments (and the
    completions since its scrape, ``freed``)."""
    return Endpoint(
        address=m.address,
        healthy=m.healthy,
        scraped_at=m.scraped_at,
        waiting=m.waiting,
        running=m.running,
        kv_usage=m.kv_usage,
        pending=pending,
        freed=freed,
        labels=m.labels,
        lora_running=tuple(m.lora_running),
        lora_waiting=tuple(m.lora_waiting),
        max_lora=m.max_lora,
        kv_tokens=max(m.block_size, 0) * max(m.num_blocks, 0),
    )


def stale_view(m: EndpointMetrics, pending: int, now: float) -> Endpoint:
    """An endpoint whose metrics are all stale, as the core sees it when no endpoint of the pool
    is fresh: its last known health and labels, no queue, running or KV numbers (they are not
    true any more), and as fresh (``scraped_at`` = ``now``) so that the pipeline considers it.
    What still holds is scored: the prefix index, sessions, and ``pending``, the assignments
    made since its last scrape and not completed (the in-flight load this replica knows)."""
    return replace(endpoint_view(m, pending), scraped_at=now, waiting=0, running=0, kv_usage=0.0)


class Affinity:
    """What decisions taught us: a prefix index per pool and session bindings."""

    def __init__(self) -> None:
        self._prefix: dict[str, PrefixIndex] = {}
        self._sessions: dict[tuple[str, str], tuple[Session, float]] = {}

    def prefix(self, pool: str) -> PrefixIndex:
        index = self._prefix.get(pool)
        if index is None:
            index = self._prefix[pool] = PrefixIndex()
        return index

    def session(self, pool: str, session: str) -> Session | None:
        found = self._sessions.get((pool, session))
        return None if found is None else found[0]

    def bind(self, u: SessionBound) -> None:
        old = self._sessions.get((u.pool, u.session))
        if old is None or old[0].at <= u.at:
            self._sessions[(u.pool, u.session)] = (Session(u.endpoint, u.at), u.at + u.ttl_s)

    def expire(self, now: float) -> None:
        old = [k for k, (_, until) in self._sessions.items() if until < now]
        for k in old:
            del self._sessions[k]

    def forget_endpoint(self, pool: str, endpoint: str) -> None:
        index = self._prefix.get(pool)
        if index is not None:
            index.remove_endpoint(endpoint)


def apply_update(u: Update, in_flight: InFlight, affinity: Affinity) -> None:
    """Remember one decision's consequence (ours, or another replica's)."""
    if isinstance(u, Assigned):
        in_flight.add(u.request_id, u.pool, u.endpoint, u.at)
    elif isinstance(u, PrefixStored):
        affinity.prefix(u.pool).add(u.endpoint, u.hashes, u.capacity)
    elif isinstance(u, SessionBound):
        affinity.bind(u)
