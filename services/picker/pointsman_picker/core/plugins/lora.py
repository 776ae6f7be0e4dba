"""``lora-affinity-scorer``: send adapter requests where the adapter is, or can be, loaded."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from pointsman_picker.core.framework import Cycle
from pointsman_picker.core.plugins._base import PARAMS, Affinity
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class LoraAffinityScorer(Affinity):
    """Adapter loaded (running or waiting) -> 1; room to load it -> ``room_score``; else 0.

    An endpoint that does not report its adapter limit (``max_lora`` 0) counts as having room.
    Requests for a base model (no adapter) score 1 everywhere: the scorer then has no effect.
    """

    __pydantic_config__ = PARAMS
    room_score: Annotated[float, Field(ge=0, le=1)] = 0.5

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        adapter = cycle.request.adapter
        if adapter is None:
            return [1.0] * len(candidates)
        out = []
        for e in candidates:
            loaded = set(e.lora_running) | set(e.lora_waiting)
            if adapter in loaded:
                out.append(1.0)
            elif e.max_lora <= 0 or len(loaded) < e.max_lora:
                out.append(self.room_score)
            else:
                out.append(0.0)
        return out
