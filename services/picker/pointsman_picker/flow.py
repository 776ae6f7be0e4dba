"""Flow control's shell: the per-replica queues, the tenant counters and their Redis exchange.

The decisions are :mod:`pointsman_picker.core.flow`'s; this module holds the state they read.

A pick request from a shim that is willing to wait (``max_wait_ms``, the shim's
``queue_wait_ms``) goes through :meth:`FlowControl.try_pick`:

* the pool has room and nobody waits: it is scheduled at once (and its tenant charged);
* the pool is saturated, or others wait already: it joins its (pool, priority, tenant) queue,
  unless the pool's or the tenant's queue is full (answered ``shed``, reason ``queue_full`` or
  ``tenant_queue_full``: the shim's 429);
* it is dispatched by :meth:`FlowControl.dispatch` when capacity frees: a new metrics snapshot
  of the pool, a completion event, or the periodic tick (every ``sync_interval_ms`` while
  requests wait) finds the pool unsaturated; the next request is chosen by
  :func:`core.flow.next_head` (band, counter, age);
* one that waited ``min(ttl_ms, max_wait_ms)`` leaves with ``dropped`` / ``ttl_expired`` (503).

**Several replicas.** The queues are per picker replica (a request waits in the replica that
received it; NATS spreads requests over the queue group). The tenant counters are shared: each
replica adds what it charges to ``HINCRBYFLOAT {key_prefix}:vtc:{pool}`` and reads the whole
hash back in the same pipeline every ``sync_interval_ms``, so every replica orders its queue by
(nearly) the same counters. The model is eventual consistency: a replica's view of the others'
service is at most one interval plus a round trip old, and two replicas lifting the same
returning tenant at once can lift it twice (never lower it). Redis down: each replica keeps
counting locally (still fair within the replica) and sends what it owes when Redis is back.
Saturation is read from the pool's snapshot plus the in-flight assignments every replica shares
(:mod:`pointsman_picker.redis_state`), so replicas stop dispatching together.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pointsman.v1 import CompletionEvent, PickReply, PickRequest, PickStatus
from pointsman_picker.config import FlowControlConfig
from pointsman_picker.core import flow as core
from pointsman_picker.core.plugins.latency import SLO_UNATTAINABLE
from pointsman_picker.core.types import Endpoint, Request
from pointsman_picker.scheduler import Scheduler

log = logging.getLogger(__name__)

#: Requests remembered for the completion's charge (prompt estimate corrected, output added).
_MAX_CHARGED = 100_000
#: Waiters of one queue looked at for one that meets its objective (``slo_hold``).
_SLO_SCAN = 8


class Counters:
    """Each pool's tenant counters: the shared ``base`` (as last read from Redis) plus this
    replica's ``delta`` not yet sent. Without Redis everything goes to ``base``."""

    def __init__(self, *, shared: bool) -> None:
        self.shared = shared
        self._base: dict[str, dict[str, float]] = {}
        self._delta: dict[str, dict[str, float]] = {}

    def value(self, pool: str, tenant: str) -> float | None:
        base = self._base.get(pool, {}).get(tenant)
        delta = self._delta.get(pool, {}).get(tenant)
        if base is None and delta is None:
            return None
        return (base or 0.0) + (delta or 0.0)

    def view(self, pool: str, tenants: set[str]) -> dict[str, float]:
        return {t: self.value(pool, t) or 0.0 for t in tenants}

    def add(self, pool: str, tenant: str, amount: float) -> None:
        target = self._delta if self.shared else self._base
        per = target.setdefault(pool, {})
        per[tenant] = per.get(tenant, 0.0) + amount

    def pools(self) -> set[str]:
        return set(self._base) | set(self._delta)

    def take_deltas(self) -> dict[str, dict[str, float]]:
        deltas, self._delta = self._delta, {}
        return deltas

    def restore(self, deltas: dict[str, dict[str, float]]) -> None:
        """Deltas that could not be sent: owed again, added to anything charged since."""
        for pool, per in deltas.items():
            for tenant, amount in per.items():
                mine = self._delta.setdefault(pool, {})
                mine[tenant] = mine.get(tenant, 0.0) + amount

    def set_base(self, pool: str, values: dict[str, float]) -> None:
        self._base[pool] = values


@dataclass(eq=False)
class Waiter:
    pick: PickRequest
    pool: str
    priority: int
    tenant: str
    seq: int
    enqueued_at: float
    ttl_s: float
    future: asyncio.Future[PickReply] = field(repr=False)
    #: Its TTFT objective when held for it (``slo_hold``): it then leaves when that has passed.
    slo_ms: float | None = None


class FlowControl:
    def __init__(
        self,
        scheduler: Scheduler,
        config: FlowControlConfig,
        *,
        shared: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = scheduler
        self.config = config
        self.metrics = scheduler.telemetry.flow
        self.counters = Counters(shared=shared)
        self._weights = core.Weights(config.input_token_weight, config.output_token_weight)
        self._clock = clock
        self._seq = itertools.count()
        #: pool -> (priority, tenant) -> waiting requests, oldest first
        self._queues: dict[str, dict[tuple[int, str], deque[Waiter]]] = {}
        self._sizes: dict[str, int] = {}
        self._tenant_sizes: dict[tuple[str, str], int] = {}
        self._last_served: dict[str, float] = {}
        self._charged: OrderedDict[str, tuple[str, str, float]] = OrderedDict()
        r = config.reserve
        self._reserve = core.Reserve(r.slots, r.backlog_ktokens, r.window_s)
        #: pool -> each tenant's recent service (``reserve``: who is over its share)
        self._recent: dict[str, core.RecentService] = {}
        #: Set when a request joins a queue: :func:`tick` sleeps on it while nobody waits.
        self._joined = asyncio.Event()

    # --- the pick path ---------------------------------------------------------------------

    def try_pick(self, pick: PickRequest) -> PickReply | Waiter:
        """The reply now, or the :class:`Waiter` to :meth:`wait` on."""
        s = self._s
        cfg = self.config
        if not cfg.enabled:
            return s.pick(pick)
        req = s.request(pick)
        pool = req.pool
        tenant = core.tenant_of(pick.headers, cfg.tenant_header, cfg.default_tenant)
        wait_ms = min(cfg.ttl_ms, pick.max_wait_ms or 0.0)
        views = s.views(pool)  # built once: the saturation check and the schedule read them
        restrict = self._restriction(pool, tenant)
        busy = None if views is None else s.saturated(pool, views, restrict)
        slo_ms: float | None = None
        if cfg.slo_hold and wait_ms > 0 and busy is not None:
            slo_ms, best = s.best_ttft(pick)
            if busy is False and slo_ms is not None and best is not None and best > slo_ms:
                busy = True  # no endpoint meets it now: wait for one that will
        # model: auto with the classifier's candidates (PickRequest.candidates, issue 17 item 3)
        candidates = getattr(pick, "candidates", None) or []
        if (
            busy
            and len(candidates) > 1
            and any(
                s.saturated(s.config.adapters.get(c.model, c.model)) is False for c in candidates
            )
        ):
            # another candidate's pool has room: the joint decision moves the request to a good
            # second model at once, no waiting
            return self._serve(pick, pool, tenant, req)
        if busy is None or (not busy and not self._sizes.get(pool)) or wait_ms <= 0:
            # Unknown pool, or room and nobody waiting, or a shim that will not wait (it gets
            # the scheduler's answer: low priorities shed when saturated, as without flow).
            return self._serve(pick, pool, tenant, req, views, restrict)
        reason = core.admit(
            self._sizes.get(pool, 0), cfg.max_queued,
            self._tenant_sizes.get((pool, tenant), 0), cfg.max_queued_per_tenant,
        )  # fmt: skip
        if reason is not None:
            return self._drop(pool, PickStatus.SHED, reason)
        if not self._tenant_sizes.get((pool, tenant)):
            self._lift(pool, tenant)
        if slo_ms is not None:
            wait_ms = min(wait_ms, slo_ms)  # later than its objective it is no use
        waiter = Waiter(
            pick, pool, req.priority, tenant, next(self._seq), self._clock(), wait_ms / 1000,
            asyncio.get_running_loop().create_future(), slo_ms,
        )  # fmt: skip
        self._queues.setdefault(pool, {}).setdefault((req.priority, tenant), deque()).append(waiter)
        self._sizes[pool] = self._sizes.get(pool, 0) + 1
        self._tenant_sizes[(pool, tenant)] = self._tenant_sizes.get((pool, tenant), 0) + 1
        self._joined.set()
        self.metrics.enqueued.labels(pool, str(req.priority)).inc()
        self.metrics.queued.labels(pool).set(self._sizes[pool])
        self.dispatch(pool)
        return waiter

    async def wait(self, waiter: Waiter) -> PickReply:
        """The waiter's reply: dispatched, or ``dropped`` / ``ttl_expired`` after its TTL."""
        try:
            async with asyncio.timeout(waiter.ttl_s):
                return await asyncio.shield(waiter.future)
        except TimeoutError:
            if waiter.future.done():
                return waiter.future.result()
            self._remove(waiter)
            if waiter.slo_ms is not None:
                return self._drop(waiter.pool, PickStatus.SHED, SLO_UNATTAINABLE)
            return self._drop(waiter.pool, PickStatus.DROPPED, core.TTL_EXPIRED)
        finally:
            if not waiter.future.done():  # cancelled (the bus is stopping): leave the queue
                self._remove(waiter)
                waiter.future.cancel()

    async def pick(self, pick: PickRequest) -> PickReply:
        got = self.try_pick(pick)
        return got if isinstance(got, PickReply) else await self.wait(got)

    def now(self) -> float:
        """The scheduler's clock, the one :meth:`wake_at` answers on."""
        return self._s.now()

    def pools(self) -> set[str]:
        """The pools whose counters matter here: known to the scheduler, or counted."""
        return {name for name, _, _ in self._s.store.pools()} | self.counters.pools()

    def queued(self, pool: str) -> int:
        return self._sizes.get(pool, 0)

    async def someone_waits(self) -> None:
        """Return once a request waits in some queue (at once while one does)."""
        while not any(self._sizes.values()):
            self._joined.clear()
            await self._joined.wait()

    # --- capacity frees ----------------------------------------------------------------------

    def dispatch(self, pool: str) -> int:
        """Serve waiting requests of ``pool`` while it has room; how many were served."""
        served = 0
        queues = self._queues.get(pool)
        while queues and self._sizes.get(pool):
            views = self._s.views(pool)
            if views is not None and self._s.saturated(pool, views):
                break  # no room for anyone (a restriction only ever narrows it)
            heads = [core.Head(p, t, q[0].seq, len(q)) for (p, t), q in queues.items() if q]
            view = self.counters.view(pool, {h.tenant for h in heads})
            restrict: core.Restriction | None = None
            if self._reserve.enabled:
                # the first in VTC order whose tenant may take the room there is: a tenant over
                # its share does not take the capacity held back for the others
                head = None
                waiting = {h.tenant for h in heads}
                for h in core.ordered_heads(heads, view):
                    restrict = self._restriction(pool, h.tenant, waiting)
                    if views is None or not self._s.saturated(pool, views, restrict):
                        head = h
                        break
            else:
                head = core.next_head(heads, view)
            if head is None:
                break
            queue = queues[(head.priority, head.tenant)]
            found = self._fitting(queue) if self.config.slo_hold else queue[0]
            if found is None:
                break  # no waiter with an objective is predicted to meet it yet
            waiter = found
            if waiter is queue[0]:
                queue.popleft()
            else:
                queue.remove(waiter)
            self._forget(waiter)
            if waiter.future.done():
                continue
            reply = self._serve(waiter.pick, pool, waiter.tenant, views=views, restrict=restrict)
            waited = self._clock() - waiter.enqueued_at
            self._s.note_wait(waiter.pick.request_id, waited)
            waiter.future.set_result(reply)
            self.metrics.dispatched.labels(pool).inc()
            self.metrics.wait_seconds.labels(pool).observe(waited)
            served += 1
        return served

    def dispatch_all(self) -> int:
        return sum(self.dispatch(pool) for pool, n in list(self._sizes.items()) if n)

    def wake_at(self) -> float | None:
        """The earliest instant (the scheduler's clock, :meth:`now`) at which an endpoint of a pool with
        requests waiting is predicted to get room under ``saturation.max_prefill_ms``; ``None``
        when no pool with waiting requests has that bound. :func:`tick` dispatches then."""
        found = [self._s.room_at(pool) for pool, n in self._sizes.items() if n]
        return min((t for t in found if t is not None), default=None)

    def on_snapshot(self, pool: str) -> None:
        if self._sizes.get(pool):
            self.dispatch(pool)

    def on_completion(self, event: CompletionEvent) -> None:
        """Charge the served tenant for what the engine reported, then try to dispatch."""
        entry = self._charged.pop(event.request_id, None)
        if entry is not None:
            pool, tenant, estimate = entry
            w = self._weights
            amount = w.output * max(event.completion_tokens or 0, 0)
            if event.prompt_tokens is not None:
                amount += w.input * (max(event.prompt_tokens, 0) - estimate)
            self.counters.add(pool, tenant, amount)
            recent = self._recent.get(pool)
            if recent is not None:
                recent.charge(tenant, amount, self._clock(), served=False)
        self.dispatch_all()

    # --- internals -----------------------------------------------------------------------------

    def _serve(
        self,
        pick: PickRequest,
        pool: str,
        tenant: str,
        req: Request | None = None,
        views: list[Endpoint] | None = None,
        restrict: core.Restriction | None = None,
    ) -> PickReply:
        reply = self._s.pick(pick, req, views, restrict)
        chosen = getattr(reply, "model", None)
        if chosen:  # the joint decision chose another model: charge its pool
            pool = self._s.config.adapters.get(chosen, chosen)
        if reply.status is PickStatus.OK and self.config.enabled:
            estimate = core.estimate_prompt_tokens(pick.prompt)
            self.counters.add(pool, tenant, core.cost(estimate, 0, self._weights))
            if self._reserve.enabled:
                now = self._clock()
                recent = self._recent.get(pool)
                if recent is None:
                    recent = self._recent[pool] = core.RecentService(self._reserve.window_s)
                recent.forget_idle(now)
                recent.charge(tenant, core.cost(estimate, 0, self._weights), now)
            self._last_served[pool] = self.counters.value(pool, tenant) or 0.0
            self._charged[pick.request_id] = (pool, tenant, estimate)
            if len(self._charged) > _MAX_CHARGED:
                self._charged.popitem(last=False)
        return reply

    def _restriction(
        self, pool: str, tenant: str, waiting: set[str] | None = None
    ) -> core.Restriction | None:
        """Where ``tenant``'s next request may go in ``pool`` under ``reserve`` (``None``: off,
        or nothing held back now): judged on this replica's recent service. ``waiting``: the
        tenants with requests waiting in ``pool``, when the caller has them."""
        reserve = self._reserve
        if not reserve.enabled:
            return None
        recent = self._recent.get(pool)
        if recent is None:
            return None
        now = self._clock()
        if waiting is None:
            waiting = {t for (_, t), q in self._queues.get(pool, {}).items() if q}
        over, other_over = recent.standing(tenant, now, waiting)
        contended = not over and other_over
        bound = self._s.plans.for_pool(pool).saturation.max_in_flight
        return core.restriction(reserve, bound, over=over, contended=contended)

    def _fitting(self, queue: deque[Waiter]) -> Waiter | None:
        """The oldest of the first :data:`_SLO_SCAN` waiters that has no objective or is
        predicted to meet what is left of it on an endpoint with room."""
        now = self._clock()
        for w in itertools.islice(queue, _SLO_SCAN):
            if w.slo_ms is None or w.future.done():
                return w
            _, best = self._s.best_ttft(w.pick)
            if best is None or best <= w.slo_ms - (now - w.enqueued_at) * 1000:
                return w
        return None

    def _lift(self, pool: str, tenant: str) -> None:
        waiting = {t for (_, t), q in self._queues.get(pool, {}).items() if q and t != tenant}
        own = self.counters.value(pool, tenant)
        counters = self.counters.view(pool, waiting)
        start = core.lifted(own, counters.values(), self._last_served.get(pool))
        if own is None or start > own:
            self.counters.add(pool, tenant, start - (own or 0.0))

    def _drop(self, pool: str, status: PickStatus, reason: str) -> PickReply:
        self.metrics.dropped.labels(pool, reason).inc()
        self._s.telemetry.decisions.labels(pool, status.value).inc()
        return PickReply(status=status, reason=reason, picker=self._s.config.replica_id)

    def _remove(self, waiter: Waiter) -> None:
        q = self._queues.get(waiter.pool, {}).get((waiter.priority, waiter.tenant))
        if q is None:
            return
        with contextlib.suppress(ValueError):
            q.remove(waiter)
            self._forget(waiter)

    def _forget(self, waiter: Waiter) -> None:
        pool, key = waiter.pool, (waiter.pool, waiter.tenant)
        self._sizes[pool] = max(0, self._sizes.get(pool, 0) - 1)
        self._tenant_sizes[key] = max(0, self._tenant_sizes.get(key, 0) - 1)
        if not self._tenant_sizes[key]:
            del self._tenant_sizes[key]
        queues = self._queues.get(pool, {})
        band = (waiter.priority, waiter.tenant)
        if band in queues and not queues[band]:
            del queues[band]
        self.metrics.queued.labels(pool).set(self._sizes[pool])


class CounterSync:
    """Exchanges the tenant counters through Redis every ``sync_interval_ms`` (see the module
    docstring for the consistency model). Never on the pick path."""

    def __init__(self, redis: Any, key_prefix: str, flow: FlowControl, interval_s: float) -> None:
        self._redis = redis
        self._kp = key_prefix
        self._flow = flow
        self._interval_s = interval_s

    def key(self, pool: str) -> str:
        return f"{self._kp}:vtc:{pool}"

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.sync()
            except Exception as exc:
                self._flow.metrics.sync_errors.inc()
                log.warning("flow control: counter exchange failed: %s", exc)

    async def sync(self) -> None:
        counters = self._flow.counters
        deltas = counters.take_deltas()
        pools = sorted(self._flow.pools() | set(deltas))
        try:
            pipe = self._redis.pipeline(transaction=False)
            for pool, per in deltas.items():
                for tenant, amount in per.items():
                    if amount:
                        pipe.hincrbyfloat(self.key(pool), tenant, amount)
            for pool in pools:
                pipe.hgetall(self.key(pool))
            results = await pipe.execute()
        except BaseException:
            counters.restore(deltas)
            raise
        for pool, values in zip(pools, results[len(results) - len(pools) :], strict=True):
            counters.set_base(
                pool, {k.decode() if isinstance(k, bytes) else str(k): float(v)
                       for k, v in values.items()},
            )  # fmt: skip


#: Shortest sleep of :func:`tick` before a predicted room (no busy loop on a late prediction).
_MIN_SLEEP_S = 0.001


def next_sleep(interval_s: float, now: float, wake_at: float | None) -> float:
    """How long :func:`tick` sleeps: the interval, or less when an endpoint is predicted to get
    room sooner (:meth:`FlowControl.wake_at`), never under a millisecond."""
    if wake_at is None:
        return interval_s
    return min(interval_s, max(wake_at - now, _MIN_SLEEP_S))


async def tick(flow: FlowControl, interval_s: float) -> None:
    """Dispatch on a timer too: in-flight state from other replicas and counters from Redis
    change without a snapshot or completion of ours, and (``saturation.max_prefill_ms``) an
    engine's prompt in progress ends between them: the tick then comes when it is predicted
    to end. Asleep while nobody waits (there is nothing to dispatch then): no wake-up every
    interval on an idle picker."""
    while True:
        await flow.someone_waits()
        await asyncio.sleep(next_sleep(interval_s, flow.now(), flow.wake_at()))
        try:
            flow.dispatch_all()
        except Exception:
            log.exception("flow control: dispatch failed")
