"""One decision for model and endpoint: which of the classifier's candidate models serves.

For ``model: auto`` the classifier sends its ranked candidates with quality scores. The picker
schedules the request in each candidate's pool (without remembering anything yet) and weighs
each outcome:

    utility = quality
              - latency_penalty_per_s * predicted TTFT of the pool's chosen endpoint (seconds)
              - saturation_penalty     if every endpoint of the pool is saturated
              - slo_miss_penalty       if the chosen endpoint is predicted to miss the SLO

A candidate whose pool cannot take the request (no endpoint, shed, unknown) is out, as is one
whose quality is more than ``max_quality_drop`` below the first candidate's. The highest utility
wins; ties go to the better-ranked model. The reason names what moved the request off the first
candidate: ``best`` (it did not move), ``saturated`` (its pool is), ``slo`` (predicted to miss
the SLO, or refused by ``slo-admission``), ``unavailable`` (its pool cannot take the request
for another reason) or ``latency``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Penalties:
    latency_penalty_per_s: float = 0.1
    saturation_penalty: float = 0.3
    slo_miss_penalty: float = 1.0
    max_quality_drop: float = 0.5


@dataclass(frozen=True, slots=True)
class Option:
    """One candidate model's outcome. ``ok``: its pool would serve the request."""

    model: str
    quality: float
    ok: bool
    saturated: bool = False
    ttft_ms: float | None = None
    meets_slo: bool = True


def utility(o: Option, p: Penalties) -> float:
    u = o.quality
    if o.ttft_ms is not None:
        u -= p.latency_penalty_per_s * o.ttft_ms / 1000.0
    if o.saturated:
        u -= p.saturation_penalty
    if not o.meets_slo:
        u -= p.slo_miss_penalty
    return u


def choose(options: Sequence[Option], p: Penalties) -> tuple[int, str] | None:
    """(index of the chosen option, reason); ``None`` when no candidate's pool can serve."""
    if not options:
        return None
    floor = options[0].quality - p.max_quality_drop
    best: tuple[float, int] | None = None
    for i, o in enumerate(options):
        if not o.ok or (i > 0 and o.quality < floor):
            continue
        u = utility(o, p)
        if best is None or u > best[0]:
            best = (u, i)
    if best is None:
        return None
    index = best[1]
    if index == 0:
        return 0, "best"
    first = options[0]
    if first.saturated:
        return index, "saturated"
    if not first.meets_slo:
        return index, "slo"
    if not first.ok:
        return index, "unavailable"
    return index, "latency"
