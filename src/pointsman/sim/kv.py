"""A bounded KV cache in blocks with automatic prefix caching, as vLLM v1's block pool keeps it.

Every physical block is in one of three states:

- *in use*: held by at least one running request (a plain block, or a cached block with a
  reference count above zero);
- *cached, evictable*: a full block whose hash is known, held by nobody; it still holds its
  tokens, so a later request with the same prefix reuses it, but it is reclaimed (least
  recently freed first) when a request needs a fresh block;
- *free*: holds nothing.

Usage (``vllm:kv_cache_usage_perc``) is in-use blocks over all blocks: evictable blocks count as
free, as in vLLM. Pure bookkeeping, no I/O and no clocks, so it is tested directly.
"""

from __future__ import annotations

from collections import OrderedDict


class KVCache:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be at least 1")
        self.num_blocks = num_blocks
        self.block_size = block_size
        #: blocks held by requests (plain ones plus cached ones with refs > 0)
        self.in_use = 0
        #: cached block hash -> number of requests holding it (0 = evictable)
        self._refs: dict[int, int] = {}
        #: evictable cached blocks, least recently freed first
        self._lru: OrderedDict[int, None] = OrderedDict()
        self.evictions = 0

    # -- queries ---------------------------------------------------------------------------
    @property
    def usage(self) -> float:
        return self.in_use / self.num_blocks

    @property
    def cached_blocks(self) -> int:
        """Blocks whose hash is known (held or evictable)."""
        return len(self._refs)

    @property
    def evictable(self) -> int:
        return len(self._lru)

    def available(self) -> int:
        """Blocks a request could get now (free plus evictable)."""
        return self.num_blocks - self.in_use

    def longest_prefix(self, hashes: list[int], limit: int) -> int:
        """How many of the first ``limit`` hashes are cached, counted from the start."""
        refs = self._refs
        n = 0
        for h in hashes[:limit]:
            if h not in refs:
                break
            n += 1
        return n

    def cost_of_hits(self, hashes: list[int]) -> int:
        """Blocks that taking these cached blocks moves from evictable to in use."""
        refs = self._refs
        return sum(1 for h in hashes if refs[h] == 0)

    # -- changes ---------------------------------------------------------------------------
    def take_cached(self, hashes: list[int]) -> None:
        """Hold cached blocks (a prefix hit); the caller checked they exist."""
        refs, lru = self._refs, self._lru
        for h in hashes:
            r = refs[h]
            if r == 0:
                del lru[h]
                self.in_use += 1
            refs[h] = r + 1

    def allocate(self, count: int) -> bool:
        """Take ``count`` plain blocks, evicting cached ones if needed; False if they do not fit."""
        if count <= 0:
            return True
        if self.num_blocks - self.in_use < count:
            return False
        shortfall = count - (self.num_blocks - self.in_use - len(self._lru))
        refs, lru = self._refs, self._lru
        for _ in range(max(0, shortfall)):
            h, _none = lru.popitem(last=False)
            del refs[h]
            self.evictions += 1
        self.in_use += count
        return True

    def promote(self, h: int) -> bool:
        """Turn a held plain block, now full of computed prompt tokens, into cached block ``h``.

        False (the block stays plain) when another request cached the same block first: vLLM
        then also keeps a duplicate that is freed as an ordinary block."""
        if h in self._refs:
            return False
        self._refs[h] = 1
        return True

    def release(self, blocks: list[int | None]) -> None:
        """Give back a request's blocks (``None`` = plain). Released in reverse order, so the
        tail of a prompt is evicted before its head, as in vLLM."""
        refs, lru = self._refs, self._lru
        for b in reversed(blocks):
            if b is None:
                self.in_use -= 1
                continue
            r = refs[b] - 1
            refs[b] = r
            if r == 0:  # the last holder: the block stays cached but becomes evictable
                lru[b] = None
                self.in_use -= 1

    def check(self) -> None:
        """Invariants, for tests."""
        held = sum(1 for r in self._refs.values() if r > 0)
        assert 0 <= self.in_use <= self.num_blocks, (self.in_use, self.num_blocks)
        assert self.in_use + len(self._lru) <= self.num_blocks
        assert held <= self.in_use
        assert all(self._refs[h] == 0 for h in self._lru)
        assert sum(1 for r in self._refs.values() if r == 0) == len(self._lru)

    def reset_prefix_cache(self) -> None:
        """Drop every evictable cached block (vLLM's ``/reset_prefix_cache``)."""
        for h in self._lru:
            del self._refs[h]
        self._lru.clear()
