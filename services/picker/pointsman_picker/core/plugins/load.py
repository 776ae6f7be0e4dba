"""Load scorers: spread requests by queue, KV-cache use and running requests.

Queue and running counts include ``pending`` (requests assigned since the endpoint's last
snapshot), so a burst between two scrapes does not pile onto one endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pointsman_picker.core.framework import Cycle
from pointsman_picker.core.plugins._base import PARAMS, Distribution, min_max_inverted
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class QueueScorer(Distribution):
    """``queue-scorer``: min-max normalised waiting queue, shortest -> 1."""

    __pydantic_config__ = PARAMS

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        return min_max_inverted([e.queue for e in candidates])


@dataclass(frozen=True, slots=True)
class KVCacheUtilizationScorer(Distribution):
    """``kv-cache-utilization-scorer``: 1 - KV-cache use."""

    __pydantic_config__ = PARAMS

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        return [1.0 - min(max(e.kv_usage, 0.0), 1.0) for e in candidates]


@dataclass(frozen=True, slots=True)
class RunningRequestsSizeScorer(Distribution):
    """``running-requests-size-scorer``: min-max normalised running requests, fewest -> 1."""

    __pydantic_config__ = PARAMS

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        return min_max_inverted([e.load for e in candidates])
