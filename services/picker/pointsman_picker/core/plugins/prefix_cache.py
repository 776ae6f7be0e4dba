"""``prefix-cache-scorer``: prefer the endpoint that likely holds the prompt's prefix in KV."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from pointsman_picker.core.framework import Cycle, PrefixStored, Update
from pointsman_picker.core.latency import BYTES_PER_TOKEN
from pointsman_picker.core.plugins._base import PARAMS, Affinity
from pointsman_picker.core.prefix import block_hashes
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class PrefixCacheScorer(Affinity):
    """Score = leading prompt blocks the endpoint likely caches / the prompt's blocks.

    ``block_size`` is in bytes of UTF-8 prompt text (about 4 per token for English);
    ``max_prefix_blocks_to_match`` caps the work per request (and the matched length);
    ``lru_capacity_per_server`` is how many blocks the index remembers per endpoint at most;
    with ``engine_capacity`` (the default) an endpoint that reports its KV-cache size (vLLM's
    ``cache_config_info``, SGLang's ``max_total_num_tokens``) is remembered for no more blocks
    than that many tokens fill (``BYTES_PER_TOKEN`` bytes a token).

    Why ``engine_capacity``: an engine keeps only what its KV cache holds and evicts the rest
    (least recently used first, as this index does). An index larger than the cache keeps
    claiming prefixes the engine evicted long ago: a request is sent after a hit that is not
    there, and its prompt work is counted as cached when it is not (``prefill-scorer``,
    the predictor's features). On the Mooncake trace, where conversations come back after
    many others, the index of llm-d's default size (31250 blocks, about 500k tokens, ten times
    the simulated engines' 49k) did exactly that (docs/scheduling.md, "Prefill-aware routing").
    """

    __pydantic_config__ = PARAMS
    block_size: Annotated[int, Field(gt=0)] = 64
    max_prefix_blocks_to_match: Annotated[int, Field(gt=0)] = 256
    lru_capacity_per_server: Annotated[int, Field(gt=0)] = 31250
    engine_capacity: bool = True

    def capacity(self, endpoint: Endpoint) -> int:
        """Blocks the index remembers for ``endpoint`` (see the class docstring)."""
        cap = self.lru_capacity_per_server
        if self.engine_capacity and endpoint.kv_tokens > 0:
            cap = min(cap, max(1, int(endpoint.kv_tokens * BYTES_PER_TOKEN) // self.block_size))
        return cap

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
                capacity=self.capacity(endpoint),
            )
        ]
