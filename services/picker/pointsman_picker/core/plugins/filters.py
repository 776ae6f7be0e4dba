"""Filters: drop candidates that must not take the request. Never add, keep the order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from pointsman_picker.core.framework import Cycle
from pointsman_picker.core.plugins._base import PARAMS
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class HealthFilter:
    """``health-filter``: only endpoints whose last scrape succeeded."""

    __pydantic_config__ = PARAMS

    def filter(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[Endpoint]:
        return [e for e in candidates if e.healthy]


@dataclass(frozen=True, slots=True)
class StalenessFilter:
    """``staleness-filter``: only endpoints scraped within ``max_age_ms``.

    The picker already drops endpoints older than ``picker.stale_after_ms`` before any profile
    runs; this filter lets one profile be stricter.
    """

    __pydantic_config__ = PARAMS
    max_age_ms: Annotated[int, Field(gt=0)] = 1000

    def filter(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[Endpoint]:
        cutoff = cycle.now - self.max_age_ms / 1000.0
        return [e for e in candidates if e.scraped_at >= cutoff]


@dataclass(frozen=True, slots=True)
class LabelFilter:
    """``label-filter`` (llm-d ``by-label``): endpoints whose ``label`` is one of ``valid_values``.

    ``allows_no_label`` keeps endpoints that do not carry the label at all.
    """

    __pydantic_config__ = PARAMS
    label: str
    valid_values: tuple[str, ...] = ()
    allows_no_label: bool = False

    def filter(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[Endpoint]:
        out = []
        for e in candidates:
            value = e.labels.get(self.label)
            if (value is None and self.allows_no_label) or value in self.valid_values:
                out.append(e)
        return out
