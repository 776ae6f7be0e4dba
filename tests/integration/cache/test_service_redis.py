"""SemanticCache against a real redis-server, without the bus: bound, eviction, rebuild, handover."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
import numpy.typing as npt
import pytest

from pointsman.v1.cache import CacheStore
from pointsman.v1.classify import ClassifyReply, ClassifyRequest, Message
from pointsman_classifier.cache.config import CacheConfig
from pointsman_classifier.cache.service import SemanticCache

pytestmark = pytest.mark.integration


def vec(seed: int) -> npt.NDArray[np.float32]:
    v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v)
    return out


def request(tenant: str = "t") -> ClassifyRequest:
    return ClassifyRequest(
        request_id="r",
        model="alpha",
        messages=[Message(role="user", content="q")],
        headers={"x-tenant-id": tenant},
        params={"temperature": 0},
    )


async def miss_and_store(a: SemanticCache, b: SemanticCache, seed: int, text: str) -> str:
    """Replica ``a`` misses, replica ``b`` completes the store (as the queue group may)."""
    reply = await a.lookup(request(), ClassifyReply(model="alpha"), vec(seed))
    assert reply.cached is None and reply.cache_store
    result = await b.store(CacheStore(token=reply.cache_store, content=text, finish_reason="stop"))
    assert result == "stored"
    return reply.cache_store


async def test_bound_eviction_rebuild_and_handover(redis_url: str) -> None:
    cfg = CacheConfig(
        enabled=True, redis_url=redis_url, key_prefix=f"t-{uuid.uuid4().hex}", max_entries=3
    )
    a, b = SemanticCache(cfg, name="a"), SemanticCache(cfg, name="b")
    try:
        for i in range(5):
            await miss_and_store(a, b, i, f"answer {i}")
        # without a bus, b applied its own events; the two oldest were evicted
        assert len(b.index) == 3
        assert b.metrics.evictions._value.get() == 2
        assert len([k async for k in b.redis.scan_iter(match=f"{cfg.key_prefix}:e:*")]) == 3
        # a replica that starts later rebuilds its index from Redis
        assert await a.rebuild() == 3
        hit = await a.lookup(request(), ClassifyReply(model="alpha"), vec(4))
        assert hit.cached is not None and hit.cached.content == "answer 4"
        assert hit.headers["x-pointsman-cache"] == "hit"
        evicted = await a.lookup(request(), ClassifyReply(model="alpha"), vec(0))
        assert evicted.cached is None
        # another tenant never sees the entry
        other = await a.lookup(request("u"), ClassifyReply(model="alpha"), vec(4))
        assert other.cached is None
        # least recently USED goes first: a hit on entry 2 makes entry 3 the one evicted next
        assert (await b.lookup(request(), ClassifyReply(model="alpha"), vec(2))).cached
        await b.flush_touched()
        await miss_and_store(a, b, 5, "answer 5")
        assert (await b.lookup(request(), ClassifyReply(model="alpha"), vec(2))).cached
        assert (await b.lookup(request(), ClassifyReply(model="alpha"), vec(3))).cached is None
        # a token is used once; unknown tokens and errors are not stored
        assert await b.store(CacheStore(token="nope", content="x")) == "unknown_token"
        reply = await a.lookup(request(), ClassifyReply(model="alpha"), vec(9))
        assert reply.cache_store
        bad = CacheStore(token=reply.cache_store, content="x", status=500)
        assert await b.store(bad) == "status"
    finally:
        await a.close()
        await b.close()


async def test_unreachable_redis_is_a_miss_without_token() -> None:
    cfg = CacheConfig(enabled=True, redis_url="redis://127.0.0.1:1/0", redis_timeout_ms=100)
    c = SemanticCache(cfg)
    c.index.add("x", "p", vec(1), 1e12)
    try:
        reply = await c.lookup(request(), ClassifyReply(model="alpha"), vec(1))
        assert reply.cached is None and reply.cache_store is None
        assert not c.available()  # resting: the next request does not wait on Redis
        assert await c.store(CacheStore(token="t", content="x")) == "unavailable"
    finally:
        await c.close()


async def test_replicas_share_entries_over_the_bus(redis_url: str, nats_url: str) -> None:
    """Replica A misses; the shim's store goes to the queue group (one replica writes it); the
    entry is announced to every replica, so B answers the paraphrase without rebuilding."""
    from pointsman.bus import NatsConfig, ServiceBus
    from pointsman.v1 import routes

    cfg = CacheConfig(enabled=True, redis_url=redis_url, key_prefix=f"t-{uuid.uuid4().hex}")
    a, b = SemanticCache(cfg, name="a"), SemanticCache(cfg, name="b")
    buses = [ServiceBus(NatsConfig(url=nats_url), f"test-{i}") for i in range(3)]
    try:
        for cache, bus in zip((a, b), buses, strict=False):
            cache.subscribe(bus)
            cache.start()
        for bus in buses:
            assert await bus.start()
            assert bus.client is not None
            await bus.client.flush()
        reply = await a.lookup(request(), ClassifyReply(model="alpha"), vec(7))
        assert reply.cache_store
        store = CacheStore(token=reply.cache_store, content="shared", finish_reason="stop")
        assert await buses[2].publish(routes.CACHE_STORE.subject, routes.CACHE_STORE.encode(store))
        deadline = asyncio.get_running_loop().time() + 10
        while not (len(a.index) == 1 and len(b.index) == 1):
            assert asyncio.get_running_loop().time() < deadline, "entry not announced to both"
            await asyncio.sleep(0.02)
        for replica in (a, b):
            hit = await replica.lookup(request(), ClassifyReply(model="alpha"), vec(7))
            assert hit.cached is not None and "shared" in hit.cached.content
        stored = sum(c.metrics.stores.labels("stored")._value.get() for c in (a, b))
        assert stored == 1  # one replica of the queue group wrote it
    finally:
        for c in (a, b):
            await c.close()
        for bus in buses:
            await bus.stop()
