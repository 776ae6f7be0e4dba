"""The replica's decision point: turns a pick request plus in-memory state into a reply.

Synchronous on purpose: nothing on this path awaits I/O, so a pick costs CPU only. The
consequences of a decision (in-flight assignment, prefix blocks, session binding) are applied
to local state at once and handed to ``sink`` (the shared-state writer), which sends them to
the other replicas behind the request's back.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from pointsman.v1 import (
    CompletionEvent,
    ModelsReply,
    PickReply,
    PickRequest,
    PickStatus,
    PoolInfo,
    PoolSnapshot,
)
from pointsman.v1.policy import InferencePolicy
from pointsman_picker.config import PickerConfig
from pointsman_picker.core.framework import Cycle, Update
from pointsman_picker.core.objectives import Objectives
from pointsman_picker.core.pipeline import Decision, schedule
from pointsman_picker.core.request import to_request
from pointsman_picker.plan import Plans, build_plans
from pointsman_picker.state import (
    Affinity,
    InFlight,
    PoolStore,
    apply_update,
    endpoint_view,
    stale_view,
)
from pointsman_picker.telemetry import Telemetry

Sink = Callable[[Sequence[Update]], None]


def _no_sink(_updates: Sequence[Update]) -> None:
    return None


class Scheduler:
    def __init__(
        self,
        config: PickerConfig,
        telemetry: Telemetry,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        plans: Plans | None = None,
    ) -> None:
        self.config = config
        self.telemetry = telemetry
        self.plans = plans or build_plans(config)
        self.store = PoolStore(config.forget_after_s)
        self.in_flight = InFlight(config.in_flight_ttl_s)
        self.affinity = Affinity()
        self.objectives = Objectives(config.objective_priorities())
        self.sink: Sink = _no_sink
        self._clock = clock
        self._rng = rng or random.Random()
        self._stale_after_s = config.stale_after_ms / 1000.0

    # --- inputs from the bus and from other replicas ---------------------------------------

    def on_snapshot(self, snap: PoolSnapshot) -> None:
        self.store.apply(snap, self._clock())
        self.telemetry.snapshots.labels(snap.pool).inc()

    def on_completion(self, event: CompletionEvent) -> None:
        released = self.in_flight.release(event.request_id)
        self.in_flight.release(f"{event.request_id}#prefill")
        if released:
            self.telemetry.completions.inc()

    def on_policy(self, policy: InferencePolicy) -> None:
        """InferenceObjectives from Kubernetes (the collector), under the config file's."""
        self.objectives = Objectives(self.config.objective_priorities(), policy.objectives)

    def on_remote(self, updates: Sequence[Update]) -> None:
        """Apply another replica's decisions to local state."""
        for u in updates:
            apply_update(u, self.in_flight, self.affinity)

    def housekeeping(self) -> None:
        now = self._clock()
        expired = self.in_flight.expire(now)
        if expired:
            self.telemetry.expired.inc(expired)
        for pool, address in self.store.forget_old(now):
            self.affinity.forget_endpoint(pool, address)
        self.affinity.expire(now)
        self.telemetry.in_flight.set(len(self.in_flight))
        for pool, _, metrics in self.store.pools():
            stale = sum(1 for m in metrics if now - m.scraped_at > self._stale_after_s)
            self.telemetry.stale_endpoints.labels(pool).set(stale)

    # --- decisions -------------------------------------------------------------------------

    def pick(self, pick: PickRequest) -> PickReply:
        now = self._clock()
        cfg = self.config
        req = to_request(
            pick,
            adapters=cfg.adapters,
            objectives=self.objectives,
            default_priority=cfg.default_priority,
        )
        metrics = self.store.metrics(req.pool)
        if metrics is None:
            return self._reply(
                req.pool,
                Decision(PickStatus.UNKNOWN_MODEL, reason=f"no pool serves '{req.model}'"),
            )
        pool = req.pool
        pending = self.in_flight.pending
        if any(m.healthy and now - m.scraped_at <= self._stale_after_s for m in metrics):
            views = [endpoint_view(m, pending(pool, m.address, m.scraped_at)) for m in metrics]
        else:
            # No fresh metrics at all (the collectors are gone, or cannot reach the pool): serve
            # from the last known healthy endpoints, scored only on what is still true.
            views = [stale_view(m, pending(pool, m.address, m.scraped_at), now) for m in metrics]
            if any(v.healthy for v in views):
                self.telemetry.stale_picks.labels(pool).inc()
        affinity = self.affinity
        cycle = Cycle(
            request=req,
            now=now,
            rng=self._rng,
            prefix=affinity.prefix(pool),
            sessions=lambda sid: affinity.session(pool, sid),
        )
        decision = schedule(self.plans.for_pool(pool), cycle, views)
        if decision.updates:
            for u in decision.updates:
                apply_update(u, self.in_flight, self.affinity)
            self.sink(decision.updates)
        if decision.status is PickStatus.OK:
            self.telemetry.picks.labels(pool, decision.endpoints[0]).inc()
        elif decision.status is PickStatus.SHED:
            self.telemetry.shed.labels(pool, decision.reason or "", req.objective or "").inc()
        return self._reply(pool, decision)

    def _reply(self, pool: str, d: Decision) -> PickReply:
        self.telemetry.decisions.labels(pool, d.status.value).inc()
        return PickReply(
            status=d.status,
            endpoints=d.endpoints,
            prefill=d.prefill,
            reason=d.reason,
            picker=self.config.replica_id,
            scores=d.scores,
        )

    def models(self) -> ModelsReply:
        now = self._clock()
        infos: dict[str, PoolInfo] = {}
        for name, first_seen, metrics in self.store.pools():
            healthy = sum(
                1 for m in metrics if m.healthy and now - m.scraped_at <= self._stale_after_s
            )
            infos[name] = PoolInfo(
                name=name, endpoints=len(metrics), healthy=healthy, created=int(first_seen)
            )
        for adapter, pool in self.config.adapters.items():
            base = infos.get(pool)
            if base is not None and adapter not in infos:
                infos[adapter] = PoolInfo(
                    name=adapter, endpoints=base.endpoints, healthy=base.healthy,
                    created=base.created,
                )  # fmt: skip
        return ModelsReply(pools=[infos[k] for k in sorted(infos)])
