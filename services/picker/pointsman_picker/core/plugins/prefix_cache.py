"""``prefix-cache-scorer``: prefer the endpoint that likely holds the prompt's prefix in KV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from pointsman_picker.core.framework import Cycle, PrefixStored, Update
from pointsman_picker.core.plugins._base import PARAMS, Affinity
from pointsman_picker.core.prefix import block_hashes
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class PrefixCacheScorer(Affinity):
    """Score = leading prompt blocks the endpoint likely caches / the prompt's blocks.

    ``block_size`` is in bytes of UTF-8 prompt text (about 4 per token for English);
    ``max_prefix_blocks_to_match`` caps the work per request (and the matched length);
    ``lru_capacity_per_server`` is how many blocks the index remembers per endpoint.
    """

    __pydantic_config__ = PARAMS
    block_size: Annotated[int, Field(gt=0)] = 64
    max_prefix_blocks_to_match: Annotated[int, Field(gt=0)] = 256
    lru_capacity_per_server: Annotated[int, Field(gt=0)] = 31250

    def hashes(self, cycle: Cycle) -> tuple[int, ...]:
        key = ("prefix-hashes", self.block_size, self.max_prefix_blocks_to_match)
        found = cycle.memo.get(key)
        if isinstance(found, tuple):
            return found
        req = cycle.request
        hashes = block_hashes(
            req.prompt or "",
            block_size=self.block_size,
            max_blocks=self.max_prefix_blocks_to_match,
            seed=req.model,
        )
        cycle.memo[key] = hashes
        return hashes

    def matched(self, cycle: Cycle, hashes: tuple[int, ...]) -> Mapping[str, int]:
        """The index's answer for the prompt, once per cycle (the latency plugins ask too)."""
        key = ("prefix-match", self.block_size, self.max_prefix_blocks_to_match)
        found = cycle.memo.get(key)
        if found is None:
            found = cycle.memo[key] = cycle.prefix.match(hashes)
        return found  # type: ignore[return-value]

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        hashes = self.hashes(cycle)
        if not hashes:
            return [0.0] * len(candidates)
        matched = self.matched(cycle, hashes)
        total = len(hashes)
        return [matched.get(e.address, 0) / total for e in candidates]

    def routed(self, cycle: Cycle, endpoint: Endpoint) -> list[Update]:
        hashes = self.hashes(cycle)
        if not hashes:
            return []
        return [
            PrefixStored(
                pool=cycle.request.pool,
                endpoint=endpoint.address,
                hashes=hashes,
                capacity=self.lru_capacity_per_server,
            )
        ]
