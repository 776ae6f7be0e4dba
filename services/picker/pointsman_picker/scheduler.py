"""The replica's decision point: turns a pick request plus in-memory state into a reply.

Synchronous on purpose: nothing on this path awaits I/O, so a pick costs CPU only. The
consequences of a decision (in-flight assignment, prefix blocks, session binding) are applied
to local state at once and handed to ``sink`` (the shared-state writer), which sends them to
the other replicas behind the request's back.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from pointsman.v1 import (
    CompletionEvent,
    EndpointMetrics,
    ModelsReply,
    PickReply,
    PickRequest,
    PickStatus,
    PoolInfo,
    PoolSnapshot,
)
from pointsman.v1.policy import InferencePolicy
from pointsman_picker.config import PickerConfig
from pointsman_picker.core import joint
from pointsman_picker.core.flow import Restriction
from pointsman_picker.core.framework import Cycle, Update
from pointsman_picker.core.latency import (
    BACKLOG,
    DEFAULT_RATE,
    NEW_PROMPT,
    Backlog,
    LatencyModel,
    LatencySample,
)
from pointsman_picker.core.objectives import Objectives
from pointsman_picker.core.pipeline import Decision, has_room, saturated, schedule, usable
from pointsman_picker.core.plugins.latency import SLO_UNATTAINABLE
from pointsman_picker.core.request import to_request
from pointsman_picker.core.slo import feature_vector, meets, predictions
from pointsman_picker.core.types import Endpoint, Request
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


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A decision not yet remembered, with what it was made from."""

    decision: Decision
    cycle: Cycle
    views: list[Endpoint]
    saturated: bool = False


def _prefill_start(x: tuple[float, ...]) -> float:
    """When a request's prefill would be done on an endpoint, in thousand tokens: the
    endpoint's prefill backlog plus the request's own uncached prompt (feature vector ``x``)."""
    return x[BACKLOG] + x[NEW_PROMPT]


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
        lat = config.latency
        self.latency: LatencyModel | None = (
            LatencyModel(forgetting=lat.forgetting, min_samples=lat.min_samples)
            if lat.enabled
            else None
        )
        #: request id -> (pool, endpoint, features, seconds it waited in flow control) of our
        #: picks awaiting their completion.
        self._tracked: OrderedDict[str, tuple[str, str, tuple[float, ...], float]] = OrderedDict()
        self._backlog = Backlog()
        self._slos = config.objective_slos()
        j = config.joint
        self._penalties = joint.Penalties(
            j.latency_penalty_per_s, j.saturation_penalty, j.slo_miss_penalty, j.max_quality_drop
        )

    # --- inputs from the bus and from other replicas ---------------------------------------

    def on_snapshot(self, snap: PoolSnapshot) -> None:
        self.store.apply(snap, self._clock())
        t = self.telemetry
        t.child(t.snapshots, snap.pool).inc()

    def on_completion(self, event: CompletionEvent) -> None:
        now = self._clock()
        released = self.in_flight.release(event.request_id, now)
        self.in_flight.release(f"{event.request_id}#prefill", now)
        if released:
            self.telemetry.completions.inc()
        tracked = self._tracked.pop(event.request_id, None)
        if tracked is None or self.latency is None or not 200 <= event.status_code < 300:
            return
        if event.ttft_ms is None and event.tpot_ms is None:
            return
        pool, endpoint, x, waited_s = tracked
        ttft = event.ttft_ms
        if ttft is not None:
            # The shim times TTFT from the request's arrival: what it waited in flow control
            # before this pick is not the endpoint's doing (the features were seen after it).
            ttft = max(0.0, ttft - waited_s * 1000.0)
            predicted = self.latency.predict(pool, endpoint, x).ttft_ms
            if predicted is not None and ttft > 0:
                self.telemetry.ttft_prediction_ratio.observe(predicted / ttft)
        sample = LatencySample(pool, endpoint, x, ttft, event.tpot_ms)
        if self.latency.learn(sample):
            self.telemetry.latency_samples.inc()
            self.sink([sample])

    def on_policy(self, policy: InferencePolicy) -> None:
        """InferenceObjectives from Kubernetes (the collector), under the config file's."""
        self.objectives = Objectives(self.config.objective_priorities(), policy.objectives)

    def on_remote(self, updates: Sequence[Update]) -> None:
        """Apply another replica's decisions to local state."""
        for u in updates:
            if isinstance(u, LatencySample):
                if self.latency is not None and self.latency.learn(u):
                    self.telemetry.latency_samples.inc()
                continue
            apply_update(u, self.in_flight, self.affinity)

    def housekeeping(self) -> None:
        now = self._clock()
        expired = self.in_flight.expire(now)
        if expired:
            self.telemetry.expired.inc(expired)
        for pool, address in self.store.forget_old(now):
            self.affinity.forget_endpoint(pool, address)
            self.in_flight.forget_endpoint(pool, address)
            if self.latency is not None:
                self.latency.forget_endpoint(pool, address)
                self._backlog.forget_endpoint(pool, address)
        self.affinity.expire(now)
        self.telemetry.in_flight.set(len(self.in_flight))
        for pool, _, metrics in self.store.pools():
            stale = sum(1 for m in metrics if now - m.scraped_at > self._stale_after_s)
            self.telemetry.stale_endpoints.labels(pool).set(stale)

    # --- decisions -------------------------------------------------------------------------

    def request(self, pick: PickRequest) -> Request:
        """The core's view of a pick request: pool, adapter, priority."""
        return self._request(pick)

    def views(self, pool: str) -> list[Endpoint] | None:
        """The endpoints of ``pool`` as the core sees them now (``None``: an unknown pool), to
        hand to :meth:`saturated` and then to :meth:`pick` of a request of that pool, so one
        decision builds them once. Valid until the state changes (a decision, a completion,
        a snapshot)."""
        metrics = self.store.metrics(pool)
        return None if metrics is None else self._views(pool, metrics)

    def saturated(
        self,
        pool: str,
        views: list[Endpoint] | None = None,
        restrict: Restriction | None = None,
    ) -> bool | None:
        """Whether every usable endpoint of ``pool`` is over a saturation threshold (counting
        the assignments made since its scrape); ``None`` for an unknown pool, ``False`` when no
        endpoint is usable at all (the pick answers that at once; waiting would not help).
        ``views``: the pool's :meth:`views`, when the caller has them; ``restrict``: flow
        control's bounds for the request's tenant (``flow_control.reserve``), which count too."""
        if views is None:
            views = self.views(pool)
            if views is None:
                return None
        now = self._clock()
        plan = self.plans.for_pool(pool)
        if not any(usable(v, now, plan.stale_after_s) for v in views):
            return False
        if restrict is not None:
            views = self._allowed(pool, views, restrict, now)
        return saturated(views, now, plan, self._in_flight_of(pool))

    def _allowed(
        self, pool: str, views: list[Endpoint], restrict: Restriction, now: float
    ) -> list[Endpoint]:
        """The endpoints a restricted request may take: under its in-flight bound, and under
        its prefill-backlog bound (known only with the latency predictor on)."""
        bound = restrict.max_in_flight
        if bound is not None:
            count = self.in_flight.count
            views = [v for v in views if count(pool, v.address) < bound]
        cap = restrict.max_backlog_ktokens
        if cap is not None and self.latency is not None:
            rate = self.latency.prefill_rate(pool) or DEFAULT_RATE
            at = self._backlog.at
            views = [v for v in views if at(pool, v.address, now, rate) <= cap]
        return views

    def now(self) -> float:
        """This scheduler's clock (the one snapshots' ``scraped_at`` compare with)."""
        return self._clock()

    def room_at(self, pool: str) -> float | None:
        """When (this scheduler's clock) an endpoint of ``pool`` is next predicted to be under
        ``saturation.max_prefill_ms``, so that flow control can dispatch then rather than at its
        next tick (the prompt in progress ends between ticks; waiting for the tick would leave
        the engine without prompt work). ``None``: no such bound, no predictor, or no usable
        endpoint."""
        plan = self.plans.for_pool(pool)
        bound = plan.saturation.max_prefill_ms
        if bound is None or self.latency is None:
            return None
        views = self.views(pool)
        if not views:
            return None
        now = self._clock()
        waits = [
            max(v.prefill_ms - bound, 0.0) / 1000.0
            for v in views
            if usable(v, now, plan.stale_after_s)
        ]
        return now + min(waits) if waits else None

    def _in_flight_of(self, pool: str) -> Callable[[str], int]:
        count = self.in_flight.count
        return lambda address: count(pool, address)

    def pick(
        self,
        pick: PickRequest,
        req: Request | None = None,
        views: list[Endpoint] | None = None,
        restrict: Restriction | None = None,
    ) -> PickReply:
        """The decision for ``pick``; ``req``: its :meth:`request`, ``views``: its pool's
        :meth:`views` since which nothing changed, when the caller has them; ``restrict``: flow
        control's bounds for its tenant (``flow_control.reserve``)."""
        now = self._clock()
        if req is None:
            req = self._request(pick)
        if pick.candidates and len(pick.candidates) > 1:
            return self._pick_joint(pick, req, now)
        outcome = self._schedule(req, now, views=views, restrict=restrict)
        if outcome is None:
            return self._reply(
                req.pool,
                Decision(PickStatus.UNKNOWN_MODEL, reason=f"no pool serves '{req.model}'"),
            )
        return self._reply(req.pool, self._commit(req, outcome))

    def _request(self, pick: PickRequest) -> Request:
        cfg = self.config
        return to_request(
            pick,
            adapters=cfg.adapters,
            objectives=self.objectives,
            default_priority=cfg.default_priority,
            slos=self._slos,
        )

    def _views(self, pool: str, metrics: list[EndpointMetrics]) -> list[Endpoint]:
        """The endpoints as the core sees them: their last metrics, plus the assignments made
        and the completions seen since, and (with the predictor, where the pool's
        ``saturation.max_prefill_ms`` reads it) their prefill backlog. Only that bound reads
        :attr:`Endpoint.prefill_ms` (``prefill-scorer`` reads the backlog itself), so a pool
        without it skips the per-endpoint copies: 6.8 us of the pick at p50
        (``bench.overhead.hot_path``)."""
        flight = self.in_flight
        views = [
            endpoint_view(
                m,
                flight.pending(pool, m.address, m.scraped_at),
                flight.freed(pool, m.address, m.scraped_at),
            )
            for m in metrics
        ]
        if self.latency is None or self.plans.for_pool(pool).saturation.max_prefill_ms is None:
            return views
        now = self._clock()
        rate = self.latency.prefill_rate(pool) or DEFAULT_RATE
        queued = self._backlog.queued
        return [
            replace(v, prefill_ms=ms)
            if (ms := queued(pool, v.address, now, rate) / rate * 1000)
            else v
            for v in views
        ]

    def _schedule(
        self,
        req: Request,
        now: float,
        *,
        weigh: bool = False,
        views: list[Endpoint] | None = None,
        restrict: Restriction | None = None,
    ) -> _Outcome | None:
        """The decision in ``req``'s pool, nothing remembered yet; ``None``: no such pool.
        The flag says whether the pool is saturated (worked out only when ``weigh``: a joint decision).
        ``views``: the pool's :meth:`views`, when the caller has them (used when a metric is fresh)."""
        metrics = self.store.metrics(req.pool)
        if metrics is None:
            return None
        pool = req.pool
        pending = self.in_flight.pending
        if any(m.healthy and now - m.scraped_at <= self._stale_after_s for m in metrics):
            if views is None:
                views = self._views(pool, metrics)
        else:
            # No fresh metrics at all (the collectors are gone, or cannot reach the pool): serve
            # from the last known healthy endpoints, scored only on what is still true.
            views = [stale_view(m, pending(pool, m.address, m.scraped_at), now) for m in metrics]
            if any(v.healthy for v in views):
                self.telemetry.stale_picks.labels(pool).inc()
        cycle = self._cycle(req, now)
        plan = self.plans.for_pool(pool)
        bound = plan.saturation.max_in_flight
        if bound > 0:
            # endpoints whose in-flight requests fill them are left out while one is not full
            # (only this bound: the queue and KV thresholds decide saturation, not the pick)
            count = self.in_flight.count
            roomy = [v for v in views if count(pool, v.address) < bound]
            if roomy:
                views = roomy
        if restrict is not None:
            views = self._restricted(pool, views, restrict, cycle)
        decision = schedule(plan, cycle, views)
        return _Outcome(
            decision, cycle, views,
            weigh and saturated(views, now, plan, self._in_flight_of(pool)),
        )  # fmt: skip

    def _restricted(
        self, pool: str, views: list[Endpoint], restrict: Restriction, cycle: Cycle
    ) -> list[Endpoint]:
        """Flow control's bounds for the request's tenant (``flow_control.reserve``), applied
        while an endpoint meets them; with ``soonest``, only the endpoints where the request's
        prefill would start and end first (prefill backlog plus its own uncached prompt)."""
        allowed = self._allowed(pool, views, restrict, cycle.now)
        if allowed:
            views = allowed
        if restrict.soonest and self.latency is not None and len(views) > 1:
            usable_now = [v for v in views if usable(v, cycle.now, self._stale_after_s)]
            if usable_now:
                starts = [(_prefill_start(feature_vector(cycle, v)), v) for v in usable_now]
                least = min(t for t, _ in starts)
                views = [v for t, v in starts if t <= least + 1e-9]
        return views

    def _cycle(self, req: Request, now: float) -> Cycle:
        pool = req.pool
        affinity = self.affinity
        cycle = Cycle(
            request=req,
            now=now,
            rng=self._rng,
            prefix=affinity.prefix(pool),
            sessions=lambda sid: affinity.session(pool, sid),
            latency=self.latency,
        )
        model = self.latency
        if model is not None:
            backlog = self._backlog
            cycle.backlog = lambda address: backlog.at(
                pool, address, now, model.prefill_rate(pool) or DEFAULT_RATE
            )
        return cycle

    def best_ttft(self, pick: PickRequest) -> tuple[float | None, float | None]:
        """(the request's TTFT objective, the lowest TTFT predicted for it on an endpoint of its
        pool with room), ``None`` where unknown (no objective, no predictor, no sample yet, or no
        endpoint with room) and where an endpoint with room has nothing in flight: serving is
        the only way its prediction is refreshed (a model that learnt a slow spell would
        otherwise hold every request, and learn nothing new, for ever), and an idle endpoint
        is the best chance the request has. Nothing is remembered: flow control asks it to
        hold a request with an SLO while no endpoint is predicted to meet it
        (``flow_control.slo_hold``)."""
        req = self._request(pick)
        slo = req.slo_ttft_ms
        metrics = self.store.metrics(req.pool)
        if slo is None or self.latency is None or metrics is None:
            return slo, None
        pool, now = req.pool, self._clock()
        plan = self.plans.for_pool(pool)
        pending, in_flight = self.in_flight.pending, self._in_flight_of(pool)
        views = [endpoint_view(m, pending(pool, m.address, m.scraped_at)) for m in metrics]
        roomy = [v for v in views if has_room(v, now, plan, in_flight)]
        if any(in_flight(v.address) == 0 for v in roomy):
            return slo, None
        known = [
            p.ttft_ms for p in predictions(self._cycle(req, now), roomy) if p.ttft_ms is not None
        ]
        return slo, min(known, default=None)

    def _commit(self, req: Request, outcome: _Outcome) -> Decision:
        """Remember the decision (local state, the shared-state sink, the predictor's features)
        and count it."""
        pool = req.pool
        decision = outcome.decision
        if decision.updates:
            for u in decision.updates:
                apply_update(u, self.in_flight, self.affinity)
            self.sink(decision.updates)
        if decision.status is PickStatus.OK:
            t = self.telemetry
            t.child(t.picks, pool, decision.endpoints[0]).inc()
            if self.latency is not None:
                self._track(req, decision.endpoints[0], outcome)
        elif decision.status is PickStatus.SHED:
            self.telemetry.shed.labels(pool, decision.reason or "", req.objective or "").inc()
        return decision

    def _track(self, req: Request, address: str, outcome: _Outcome) -> None:
        """Keep the features the primary endpoint was chosen with, to learn from its
        completion (the state as the decision saw it, before this request's own assignment)."""
        for view in outcome.views:
            if view.address == address:
                x = feature_vector(outcome.cycle, view)
                self._tracked[req.request_id] = (req.pool, address, x, 0.0)
                if len(self._tracked) > self.config.latency.max_tracked:
                    self._tracked.popitem(last=False)
                rate = (self.latency.prefill_rate(req.pool) if self.latency else None) or (
                    DEFAULT_RATE
                )
                # its uncached prompt joins the endpoint's backlog
                self._backlog.add(req.pool, address, x[NEW_PROMPT], outcome.cycle.now, rate)
                return

    def note_wait(self, request_id: str, waited_s: float) -> None:
        """Flow control held this (just picked) request ``waited_s`` before its pick: the
        shim's TTFT counts that wait, the endpoint's prediction must not (see on_completion)."""
        found = self._tracked.get(request_id)
        if found is not None:
            self._tracked[request_id] = (*found[:3], max(waited_s, 0.0))

    def _pick_joint(self, pick: PickRequest, first: Request, now: float) -> PickReply:
        """Schedule the request in every candidate model's pool and keep the best trade of
        quality against predicted latency (``core/joint.py``)."""
        assert pick.candidates is not None
        options: list[joint.Option] = []
        outcomes: list[tuple[Request, _Outcome] | None] = []
        for cand in pick.candidates:
            req = first if cand.model == first.model else self._request(
                PickRequest(
                    request_id=pick.request_id, model=cand.model, subset=None,
                    headers=pick.headers, prompt=pick.prompt,
                    max_endpoints=pick.max_endpoints, session=pick.session,
                )
            )  # fmt: skip
            outcome = self._schedule(req, now, weigh=True)
            if outcome is None:
                outcomes.append(None)
                options.append(joint.Option(cand.model, cand.score, ok=False))
                continue
            decision = outcome.decision
            ok = decision.status is PickStatus.OK
            ttft = None
            fits = decision.reason != SLO_UNATTAINABLE
            if ok and self.latency is not None:
                e = next(v for v in outcome.views if v.address == decision.endpoints[0])
                x = feature_vector(outcome.cycle, e)
                pred = self.latency.predict(req.pool, e.address, x)
                ttft = pred.ttft_ms
                fits = meets(pred, req.slo_ttft_ms, req.slo_tpot_ms, 0.0)
            outcomes.append((req, outcome))
            options.append(joint.Option(cand.model, cand.score, ok, outcome.saturated, ttft, fits))
        chosen = joint.choose(options, self._penalties)
        if chosen is None:
            # No candidate's pool can serve: answer as the first candidate would.
            first_outcome = outcomes[0]
            if first_outcome is None:
                return self._reply(
                    first.pool,
                    Decision(PickStatus.UNKNOWN_MODEL, reason=f"no pool serves '{first.model}'"),
                )
            self.telemetry.model_choice.labels("none", "unavailable").inc()
            return self._reply(first.pool, first_outcome[1].decision)
        index, reason = chosen
        found = outcomes[index]
        assert found is not None
        req, chosen_outcome = found
        decision = self._commit(req, chosen_outcome)
        self.telemetry.model_choice.labels(_rank_label(index), reason).inc()
        reply = self._reply(req.pool, decision)
        if decision.status is PickStatus.OK:
            reply.model = req.model
            reply.model_rank = index
            reply.model_reason = reason
        return reply

    def _reply(self, pool: str, d: Decision) -> PickReply:
        t = self.telemetry
        t.child(t.decisions, pool, d.status.value).inc()
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


def _rank_label(index: int) -> str:
    return ("first", "second", "third")[index] if index < 3 else "other"
