"""KV block pool: capacity, prefix reuse, LRU eviction of freed cached blocks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pointsman.sim.kv import KVCache


def test_allocate_until_full() -> None:
    kv = KVCache(4, 16)
    assert kv.allocate(3)
    assert not kv.allocate(2)
    assert kv.allocate(1)
    assert kv.usage == 1.0
    kv.release([None, None, None, None])
    assert kv.usage == 0.0
    kv.check()


def test_cached_blocks_survive_release_and_are_reused() -> None:
    kv = KVCache(8, 16)
    kv.allocate(2)
    assert kv.promote(101) and kv.promote(102)
    kv.release([101, 102])
    assert kv.usage == 0.0 and kv.evictable == 2
    assert kv.longest_prefix([101, 102, 103], limit=3) == 2
    assert kv.longest_prefix([101, 102, 103], limit=1) == 1
    assert kv.cost_of_hits([101, 102]) == 2
    kv.take_cached([101, 102])
    assert kv.in_use == 2 and kv.evictable == 0
    kv.check()


def test_shared_block_counts_once() -> None:
    kv = KVCache(8, 16)
    kv.allocate(1)
    kv.promote(7)
    kv.take_cached([7])  # a second request holds the same block
    assert kv.in_use == 1
    assert not kv.promote(7)  # already cached: the newcomer keeps a plain duplicate
    kv.release([7])
    assert kv.in_use == 1 and kv.evictable == 0
    kv.release([7])
    assert kv.in_use == 0 and kv.evictable == 1
    kv.check()


def test_eviction_takes_least_recently_freed_tail_first() -> None:
    kv = KVCache(3, 16)
    kv.allocate(3)
    for h in (1, 2, 3):
        kv.promote(h)
    kv.release([1, 2, 3])  # released in reverse: 3 is freed first, so evicted first
    assert kv.allocate(1)
    assert kv.longest_prefix([1, 2, 3], 3) == 2
    assert kv.evictions == 1
    assert kv.allocate(2)
    assert kv.cached_blocks == 0
    kv.check()


def test_reset_prefix_cache_drops_only_evictable() -> None:
    kv = KVCache(4, 16)
    kv.allocate(2)
    kv.promote(1)
    kv.promote(2)
    kv.release([1])
    kv.reset_prefix_cache()
    assert kv.longest_prefix([1], 1) == 0 and kv.cached_blocks == 1
    kv.check()


ops = st.lists(
    st.tuples(st.sampled_from(["alloc", "release", "hit"]), st.integers(0, 6), st.integers(0, 9)),
    max_size=80,
)


@given(ops)
def test_blocks_never_exceed_capacity(script: list[tuple[str, int, int]]) -> None:
    kv = KVCache(10, 4)
    held: list[list[int | None]] = []
    for op, n, h in script:
        if op == "alloc":
            if kv.allocate(n):
                blocks: list[int | None] = [None] * n
                if n and kv.promote(h):
                    blocks[0] = h
                held.append(blocks)
        elif op == "hit":
            if kv.longest_prefix([h], 1) == 1 and kv.cost_of_hits([h]) <= kv.available():
                kv.take_cached([h])
                held.append([h])
        elif held:
            kv.release(held.pop(n % len(held)))
        kv.check()
        plain = sum(1 for blocks in held for b in blocks if b is None)
        shared = {b for blocks in held for b in blocks if b is not None}
        assert kv.in_use == plain + len(shared)  # a block held twice is one block
    for blocks in held:
        kv.release(blocks)
    assert kv.in_use == 0
    kv.check()
