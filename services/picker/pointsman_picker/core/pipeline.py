"""Running a scheduling profile, and the whole decision for one request in one pool.

``schedule`` is the picker's decision as a pure function: the pool's endpoints (with pending
load), the request and read-only state in; the ordered endpoints, the prefill endpoint, the
status and the state updates to remember out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pointsman.v1 import PickStatus
from pointsman_picker.core.framework import (
    Admitter,
    Assigned,
    Cycle,
    Filter,
    Observer,
    Picker,
    PrefixStored,
    Scorer,
    Update,
)
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class WeightedScorer:
    name: str
    scorer: Scorer
    weight: float


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: Picker
    #: The plugins that remember decisions (found once here: Protocol checks are slow).
    observers: tuple[Observer, ...] = ()
    #: Admission steps, run on the live candidates before the filters (may refuse: a 429).
    admitters: tuple[Admitter, ...] = ()

    def __post_init__(self) -> None:
        plugins: list[object] = [*self.filters, *(w.scorer for w in self.scorers), self.picker]
        found = tuple(p for p in plugins if isinstance(p, Observer))
        object.__setattr__(self, "observers", found)


@dataclass(frozen=True, slots=True)
class Saturation:
    """An endpoint is saturated at ``queue_depth_threshold`` waiting requests (its
    :attr:`~pointsman_picker.core.types.Endpoint.backlog`) or at ``kv_cache_util_threshold`` KV
    use, or (``max_in_flight`` > 0) once that many requests the pickers sent it are in flight; a
    pool, when every candidate is (or is stale)."""

    queue_depth_threshold: int = 5
    kv_cache_util_threshold: float = 0.8
    #: Requests in flight (assigned, not completed) that fill an endpoint; 0: no such bound.
    max_in_flight: int = 0
    #: Prefill backlog (:attr:`Endpoint.prefill_ms`) above which an endpoint is full; ``None``:
    #: no such bound.
    max_prefill_ms: float | None = None


@dataclass(frozen=True, slots=True)
class PoolPlan:
    profile: Profile
    prefill_profile: Profile | None = None
    saturation: Saturation = field(default_factory=Saturation)
    stale_after_s: float = 1.0
    #: Endpoint label naming its role (prefill / decode / both) for P/D disaggregation.
    role_label: str = "role"
    #: Prompts shorter than this (UTF-8 bytes) are not disaggregated: prefill stays local.
    pd_threshold_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ProfileResult:
    ordered: list[Endpoint]
    totals: dict[str, float]
    detail: dict[str, float]


@dataclass(frozen=True, slots=True)
class Decision:
    status: PickStatus
    endpoints: list[str] = field(default_factory=list)
    prefill: str | None = None
    reason: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    updates: list[Update] = field(default_factory=list)


def run_profile(
    profile: Profile, cycle: Cycle, candidates: Sequence[Endpoint], limit: int
) -> ProfileResult:
    """Filters, then the weighted sum of clamped scores, then the picker."""
    current = list(candidates)
    for f in profile.filters:
        current = f.filter(cycle, current)
        if not current:
            return ProfileResult([], {}, {})
    totals = [0.0] * len(current)
    detail: dict[str, float] = {}
    for ws in profile.scorers:
        raw = ws.scorer.score(cycle, current)
        for i, value in enumerate(raw):
            v = 0.0 if value != value else min(max(value, 0.0), 1.0)  # NaN -> 0
            totals[i] += ws.weight * v
            if cycle.request.debug:
                detail[f"{current[i].address}/{ws.name}"] = v
    ordered = profile.picker.pick(cycle, current, totals, limit)
    return ProfileResult(
        ordered, {e.address: t for e, t in zip(current, totals, strict=True)}, detail
    )


def usable(endpoint: Endpoint, now: float, stale_after_s: float) -> bool:
    return endpoint.healthy and now - endpoint.scraped_at <= stale_after_s


def saturated(
    endpoints: Sequence[Endpoint],
    now: float,
    plan: PoolPlan,
    in_flight: Callable[[str], int] | None = None,
) -> bool:
    """True when no candidate has room: each is over a threshold, or unhealthy, or stale.
    ``in_flight`` (an endpoint's requests in flight) applies ``max_in_flight``."""
    return not any(has_room(e, now, plan, in_flight) for e in endpoints)


def has_room(
    e: Endpoint, now: float, plan: PoolPlan, in_flight: Callable[[str], int] | None = None
) -> bool:
    """The endpoint is usable and under every saturation threshold."""
    sat = plan.saturation
    return (
        usable(e, now, plan.stale_after_s)
        and e.backlog < sat.queue_depth_threshold
        and e.kv_usage < sat.kv_cache_util_threshold
        and (
            sat.max_in_flight <= 0 or in_flight is None or in_flight(e.address) < sat.max_in_flight
        )
        and (sat.max_prefill_ms is None or e.prefill_ms <= sat.max_prefill_ms)
    )


def _role(e: Endpoint, label: str) -> str:
    return e.labels.get(label, "both")


def in_subset(address: str, subset: frozenset[str]) -> bool:
    """Whether the proxy's subset hint allows ``address`` (``host:port``): an entry with a port
    names that endpoint (one data-parallel rank of a pod), an entry without one names the host
    (every rank of the pod), as the Inference Extension's conformance picker reads it."""
    if address in subset:
        return True
    host = address.rpartition(":")[0]
    return host in subset or host.strip("[]") in subset


def schedule(plan: PoolPlan, cycle: Cycle, endpoints: Sequence[Endpoint]) -> Decision:
    req = cycle.request
    subset = req.subset
    candidates = (
        list(endpoints)
        if subset is None
        else [e for e in endpoints if in_subset(e.address, subset)]
    )
    if req.priority < 0 and saturated(candidates, cycle.now, plan):
        return Decision(PickStatus.SHED, reason="saturated")
    live = [e for e in candidates if usable(e, cycle.now, plan.stale_after_s)]
    if not live:
        why = "no endpoint in the subset hint" if not candidates else "no healthy, fresh endpoint"
        return Decision(PickStatus.NO_ENDPOINTS, reason=why)

    disaggregate = plan.prefill_profile is not None and any(
        _role(e, plan.role_label) == "prefill" for e in live
    )
    decode = [e for e in live if _role(e, plan.role_label) != "prefill"] if disaggregate else live
    for admitter in plan.profile.admitters:
        refused = admitter.admit(cycle, decode)
        if refused is not None:
            return Decision(PickStatus.SHED, reason=refused)
    limit = max(1, req.max_endpoints)
    result = run_profile(plan.profile, cycle, decode, limit)
    if not result.ordered:
        return Decision(
            PickStatus.NO_ENDPOINTS, reason=f"profile '{plan.profile.name}' filtered out all"
        )
    primary = result.ordered[0]
    updates: list[Update] = [Assigned(req.request_id, req.pool, primary.address, cycle.now)]
    for obs in plan.profile.observers:
        updates.extend(obs.routed(cycle, primary))

    prefill: str | None = None
    prompt_bytes = len((req.prompt or "").encode("utf-8", "surrogatepass"))
    if (
        disaggregate
        and plan.prefill_profile is not None
        and prompt_bytes >= plan.pd_threshold_bytes
    ):
        pool = [e for e in live if _role(e, plan.role_label) in ("prefill", "both")]
        pres = run_profile(plan.prefill_profile, cycle, pool, 1)
        if pres.ordered and pres.ordered[0].address != primary.address:
            chosen = pres.ordered[0]
            prefill = chosen.address
            updates.append(
                Assigned(f"{req.request_id}#prefill", req.pool, chosen.address, cycle.now)
            )
            for obs in plan.prefill_profile.observers:
                updates.extend(u for u in obs.routed(cycle, chosen) if isinstance(u, PrefixStored))

    scores: dict[str, float] = {}
    if req.debug:
        scores = {**result.totals, **result.detail}
    return Decision(
        PickStatus.OK,
        endpoints=[e.address for e in result.ordered],
        prefill=prefill,
        scores=scores,
        updates=updates,
    )
