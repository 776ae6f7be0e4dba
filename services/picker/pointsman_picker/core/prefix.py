"""An approximate prefix cache: which endpoint likely holds the KV blocks of a prompt's prefix.

No tokenizer round trip: the prompt's UTF-8 bytes are cut into fixed-size blocks and each block
is hashed together with the hash of the block before it, so equal hashes mean equal prefixes
up to that block (as the engine's own prefix cache keys its blocks). The index learns from
routing decisions, not from the engines: when a request goes to an endpoint, its blocks are
assumed cached there, until that endpoint's LRU (of ``capacity`` blocks) evicts them.

Each block's hash is CRC-32 and Adler-32 of the whole prefix up to the block's end (both
continue from the previous block's value, so the chain costs one pass over the bytes), packed
into 64 bits. Not Python's ``hash()``, which differs per process: replicas must compute the
same hashes to share the index. A collision only costs one less-than-ideal pick.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from zlib import adler32, crc32


def block_hashes(text: str, *, block_size: int, max_blocks: int, seed: str = "") -> tuple[int, ...]:
    """Chained hashes of the prompt's full blocks (a partial last block is not cached)."""
    data = memoryview(text.encode("utf-8", "surrogatepass"))
    count = min(len(data) // block_size, max_blocks)
    seed_bytes = seed.encode("utf-8", "surrogatepass")
    c, a = crc32(seed_bytes), adler32(seed_bytes)
    out = []
    for i in range(count):
        block = data[i * block_size : (i + 1) * block_size]
        c = crc32(block, c)
        a = adler32(block, a)
        out.append((c << 32) | a)
    return tuple(out)


class PrefixIndex:
    """Block hash -> endpoints that likely hold it, with an LRU of blocks per endpoint.

    Owners are a bit mask per block (one bit per endpoint of the pool), not a set: an int is
    not tracked by the garbage collector, so a large index adds no time to collections, and
    matching is a running AND.
    """

    def __init__(self) -> None:
        self._owners: dict[int, int] = {}
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._bit: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._free: list[int] = []

    def _bit_of(self, endpoint: str) -> int:
        bit = self._bit.get(endpoint)
        if bit is None:
            bit = self._free.pop() if self._free else len(self._bit)
            self._bit[endpoint] = bit
            self._names[bit] = endpoint
        return bit

    def add(self, endpoint: str, hashes: Sequence[int], capacity: int) -> None:
        mask = 1 << self._bit_of(endpoint)
        lru = self._lru.get(endpoint)
        if lru is None:
            lru = self._lru[endpoint] = OrderedDict()
        owners = self._owners
        for h in hashes:
            if h in lru:
                lru.move_to_end(h)
            else:
                lru[h] = None
                owners[h] = owners.get(h, 0) | mask
        while len(lru) > max(capacity, 0):
            old, _ = lru.popitem(last=False)
            self._disown(old, mask)

    def _disown(self, h: int, mask: int) -> None:
        left = self._owners.get(h, 0) & ~mask
        if left:
            self._owners[h] = left
        else:
            self._owners.pop(h, None)

    def remove_endpoint(self, endpoint: str) -> None:
        bit = self._bit.pop(endpoint, None)
        if bit is None:
            return
        mask = 1 << bit
        for h in self._lru.pop(endpoint, {}):
            self._disown(h, mask)
        del self._names[bit]
        self._free.append(bit)

    def endpoints(self) -> list[str]:
        return list(self._lru)

    def blocks(self, endpoint: str) -> int:
        return len(self._lru.get(endpoint, ()))

    def match(self, hashes: Sequence[int]) -> Mapping[str, int]:
        """Per endpoint, the number of leading blocks of ``hashes`` it holds."""
        owners = self._owners
        active = -1
        depth = 0
        counts: dict[str, int] = {}
        for h in hashes:
            nxt = active & owners.get(h, 0)
            if nxt != active and depth:
                self._record(active & ~nxt, depth, counts)
            active = nxt
            if not active:
                return counts
            depth += 1
        if depth:
            self._record(active, depth, counts)
        return counts

    def _record(self, mask: int, depth: int, counts: dict[str, int]) -> None:
        names = self._names
        while mask:
            low = mask & -mask
            counts[names[low.bit_length() - 1]] = depth
            mask ^= low
