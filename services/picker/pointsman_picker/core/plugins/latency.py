"""Plugins on the latency predictor (:mod:`pointsman_picker.core.latency`).

* ``latency-scorer``: prefer the endpoint predicted fastest (or with the most SLO headroom);
* ``slo-headroom-filter``: keep only the endpoints predicted to meet the request's SLO;
* ``slo-admission``: refuse (429, reason ``slo_unattainable``) a request whose SLO no endpoint
  is predicted to meet;
* ``prefill-scorer``: prefer the endpoint where the request's prefill would end soonest (its
  prefill backlog plus the request's own uncached prompt there).

An endpoint without a prediction (the predictor has not learnt its pool yet) is never filtered
out or counted against the request: the plugins stay neutral until there is something to know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from pointsman_picker.core.framework import Cycle
from pointsman_picker.core.latency import BACKLOG, NEW_PROMPT
from pointsman_picker.core.plugins._base import PARAMS, Distribution
from pointsman_picker.core.slo import feature_vector, headroom, meets, predictions
from pointsman_picker.core.types import Endpoint

#: The reason ``slo-admission`` gives (``x-pointsman-shed-reason``).
SLO_UNATTAINABLE = "slo_unattainable"


@dataclass(frozen=True, slots=True)
class LatencyScorer(Distribution):
    """``latency-scorer``: with an SLO, the relative headroom under it (the smaller of TTFT's and
    TPOT's, clamped to [0, 1]); without one, or when no candidate has headroom, the cheapest
    predicted cost ``ttft + tpot_tokens * tpot`` divided by the candidate's (cheapest -> 1,
    twice as slow -> 0.5). Candidates with no prediction get the mean of the
    others' scores (all 1 when none has one)."""

    __pydantic_config__ = PARAMS
    #: Output tokens the TPOT prediction is weighed with when there is no SLO.
    tpot_tokens: Annotated[float, Field(ge=0)] = 32.0

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        preds = predictions(cycle, candidates)
        req = cycle.request
        known: list[int] = []
        values: list[float] = []
        if req.slo_ttft_ms is not None or req.slo_tpot_ms is not None:
            for i, p in enumerate(preds):
                room = headroom(p, req.slo_ttft_ms, req.slo_tpot_ms)
                if room is not None:
                    known.append(i)
                    values.append(min(max(room, 0.0), 1.0))
        if not any(values):  # no SLO, or no candidate with headroom: the predicted cost
            known, values = [], []
            costs: list[float] = []
            for i, p in enumerate(preds):
                if p.ttft_ms is None and p.tpot_ms is None:
                    continue
                known.append(i)
                costs.append((p.ttft_ms or 0.0) + self.tpot_tokens * (p.tpot_ms or 0.0))
            # Relative, not min-max: 100 vs 101 ms predicted must not swing the whole weight.
            cheapest = min(costs, default=0.0)
            values = [1.0 if c <= 0 else max(cheapest, 1e-9) / c for c in costs]
        if not known:
            return [1.0] * len(candidates)
        mean = sum(values) / len(values)
        out = [mean] * len(candidates)
        for i, v in zip(known, values, strict=True):
            out[i] = v
        return out


@dataclass(frozen=True, slots=True)
class SloHeadroomFilter:
    """``slo-headroom-filter``: the candidates predicted to meet the request's SLO with
    ``margin`` to spare. When none does, all are kept (``slo-admission`` decides whether the
    request is refused; the scorer still prefers the least bad one)."""

    __pydantic_config__ = PARAMS
    margin: Annotated[float, Field(ge=0, lt=1)] = 0.0

    def filter(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[Endpoint]:
        req = cycle.request
        if req.slo_ttft_ms is None and req.slo_tpot_ms is None:
            return list(candidates)
        preds = predictions(cycle, candidates)
        kept = [
            e
            for e, p in zip(candidates, preds, strict=True)
            if meets(p, req.slo_ttft_ms, req.slo_tpot_ms, self.margin)
        ]
        return kept or list(candidates)


@dataclass(frozen=True, slots=True)
class SloAdmission:
    """``slo-admission``: refuse a request with an SLO that no candidate is predicted to meet
    (after ``margin``), unless its priority is at least ``exempt_priority``."""

    __pydantic_config__ = PARAMS
    margin: Annotated[float, Field(ge=0, lt=1)] = 0.0
    #: Requests of this priority or higher are never refused (``null``: none is exempt).
    exempt_priority: int | None = None

    def admit(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> str | None:
        req = cycle.request
        if req.slo_ttft_ms is None and req.slo_tpot_ms is None:
            return None
        if self.exempt_priority is not None and req.priority >= self.exempt_priority:
            return None
        if not candidates:
            return None
        for p in predictions(cycle, candidates):
            if meets(p, req.slo_ttft_ms, req.slo_tpot_ms, self.margin):
                return None
        return SLO_UNATTAINABLE


def prefill_end(cycle: Cycle, endpoint: Endpoint) -> float:
    """When the request's prefill would end on ``endpoint``, in thousand prompt tokens of work:
    the prefill backlog the endpoint has (uncached prompts sent to it and not computed yet, the
    predictor's fluid estimate) plus the request's own prompt tokens it does not cache. The
    engine computes prompts first come, first served (chunked prefill after the decodes of
    the step), so this is the work ahead of the request's first token there."""
    x = feature_vector(cycle, endpoint)
    return x[BACKLOG] + x[NEW_PROMPT]


@dataclass(frozen=True, slots=True)
class PrefillScorer(Distribution):
    """``prefill-scorer``: the endpoint where the request's first token would come soonest, by
    work rather than by counts: the least prefill work ahead of it and in it
    (:func:`prefill_end`), relative to the least of the candidates (least -> 1, twice the
    work -> 0.5).

    Why: on long prompts TTFT is the prompt work queued on the engine, and request counts do
    not measure it (vLLM admits several prompts into one step, so the waiting queue is empty
    while seconds of prefill are ahead; a 200-token and a 3,500-token request count the same).
    Routing each request to the least work left is the classic dispatch rule for first-come,
    first-served servers; counting the request's own uncached tokens on each candidate makes
    it prefix-aware (a cache hit is less work) without a separate trade-off. Without the
    latency predictor (``picker.latency.enabled: false``) the backlog is unknown and every
    candidate scores 1 (neutral)."""

    __pydantic_config__ = PARAMS

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        if cycle.latency is None or not candidates:
            return [1.0] * len(candidates)
        ends = [prefill_end(cycle, e) for e in candidates]
        least = max(min(ends), 1e-3)  # a thousandth of a thousand tokens: one token of work
        return [least / max(t, 1e-3) for t in ends]
