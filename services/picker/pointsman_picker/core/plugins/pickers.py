"""Pickers: turn scores into the ordered result (primary first, then fallbacks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pointsman_picker.core.framework import Cycle
from pointsman_picker.core.plugins._base import PARAMS
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class MaxScorePicker:
    """``max-score-picker``: highest total score first; ties in random order.

    Random tie-break matters: with equal scores (an idle pool, identical metrics) taking the
    first endpoint every time would pile a burst onto one replica.
    """

    __pydantic_config__ = PARAMS

    def pick(
        self, cycle: Cycle, candidates: Sequence[Endpoint], scores: Sequence[float], limit: int
    ) -> list[Endpoint]:
        rnd = cycle.rng.random
        keyed = sorted(zip(scores, [rnd() for _ in candidates], candidates, strict=True),
                       key=lambda k: (-k[0], k[1]))  # fmt: skip
        return [k[2] for k in keyed[:limit]]


@dataclass(frozen=True, slots=True)
class RandomPicker:
    """``random-picker``: uniform random order, scores ignored."""

    __pydantic_config__ = PARAMS

    def pick(
        self, cycle: Cycle, candidates: Sequence[Endpoint], scores: Sequence[float], limit: int
    ) -> list[Endpoint]:
        out = list(candidates)
        cycle.rng.shuffle(out)
        return out[:limit]


@dataclass(frozen=True, slots=True)
class WeightedRandomPicker:
    """``weighted-random-picker``: random order with probability proportional to score.

    Sampling without replacement (Efraimidis-Spirakis keys ``u ** (1 / score)``); endpoints
    scoring 0 come last, in random order.
    """

    __pydantic_config__ = PARAMS

    def pick(
        self, cycle: Cycle, candidates: Sequence[Endpoint], scores: Sequence[float], limit: int
    ) -> list[Endpoint]:
        rnd = cycle.rng.random
        keyed = []
        for s, e in zip(scores, candidates, strict=True):
            u = rnd()
            key = u ** (1.0 / s) if s > 0 else -1.0 + u
            keyed.append((key, e))
        keyed.sort(key=lambda k: -k[0])
        return [e for _, e in keyed[:limit]]
