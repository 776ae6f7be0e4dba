"""What every plugin dataclass shares: how its parameters are validated from YAML."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from pointsman_picker.core.framework import Category

#: Plugin dataclasses set ``__pydantic_config__ = PARAMS``: unknown parameters are errors, and
#: each parameter may be written in snake_case or in llm-d's camelCase (``blockSize``).
PARAMS = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


def min_max_inverted(values: Sequence[float]) -> list[float]:
    """Smallest value -> 1, largest -> 0, linear between; all equal -> 1 for all."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [1.0] * len(values)
    span = hi - lo
    return [(hi - v) / span for v in values]


class Distribution:
    """A scorer that spreads requests (``Category.DISTRIBUTION``)."""

    __slots__ = ()

    @property
    def category(self) -> Category:
        return Category.DISTRIBUTION


class Affinity:
    """A scorer that keeps requests where they were (``Category.AFFINITY``)."""

    __slots__ = ()

    @property
    def category(self) -> Category:
        return Category.AFFINITY
