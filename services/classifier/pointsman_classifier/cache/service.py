"""The semantic cache of one classifier replica: Redis for the shared entries, the bus for sync.

Lookups never scan Redis: the replica's :class:`~pointsman_classifier.cache.index.VectorIndex`
finds the nearest stored prompt in the request's partition, and only a candidate above the
threshold costs one Redis read (which also proves the entry still exists). A miss parks what the
store needs (tenant, partition, embedding) in Redis under a token with a short TTL, so whichever
replica receives the shim's :class:`~pointsman.v1.cache.CacheStore` can write the entry. Every new
or evicted entry is announced on ``pointsman.v1.cache.events`` to all replicas; a replica that
starts (or reconnects to Redis after an outage) rebuilds its index with SCAN.

Redis failing or slow degrades to no cache: lookups miss, stores are dropped, both counted; after
a failure Redis is left alone for ``redis_retry_s`` so requests do not each pay the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from pointsman.bus import Received, ServiceBus
from pointsman.redisconf import RedisSecurity
from pointsman.runtime import cancel_and_wait
from pointsman.v1 import routes
from pointsman.v1.cache import CacheEvent, CacheStore
from pointsman.v1.classify import CachedAnswer, ClassifyReply, ClassifyRequest, answer_text
from pointsman_classifier.cache.config import CacheConfig
from pointsman_classifier.cache.core import (
    H_CACHE,
    H_SIMILARITY,
    StoredAnswer,
    plan,
    storable,
)
from pointsman_classifier.cache.index import VectorIndex

log = logging.getLogger(__name__)
T = TypeVar("T")

_FAILED: Any = object()
_LOOKUP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Pending(msgspec.Struct, kw_only=True):
    """What a missed lookup parks in Redis for the store (any replica may complete it)."""

    tenant: str
    partition: str
    model: str
    category: str | None
    embedding: bytes


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.lookups = Counter(
            "pointsman_classifier_cache_lookups_total",
            "Cache lookups by result (hit, miss, bypass = no-cache, skip = not cacheable, "
            "unavailable = Redis down) and category; hit rate = hit / (hit + miss).",
            ["result", "category"],
            registry=r,
        )
        self.skips = Counter(
            "pointsman_classifier_cache_skips_total",
            "Requests the cache did not apply to, by reason.",
            ["reason"],
            registry=r,
        )
        self.stores = Counter(
            "pointsman_classifier_cache_stores_total",
            "Store messages by result (stored, or why dropped).",
            ["result"],
            registry=r,
        )
        self.evictions = Counter(
            "pointsman_classifier_cache_evictions_total",
            "Entries evicted by the max_entries bound.",
            registry=r,
        )
        self.redis_errors = Counter(
            "pointsman_classifier_cache_redis_errors_total",
            "Redis calls that failed or timed out, by operation.",
            ["op"],
            registry=r,
        )
        self.lookup_seconds = Histogram(
            "pointsman_classifier_cache_lookup_seconds",
            "Cache lookup time (index search and, on a candidate, the Redis read).",
            buckets=_LOOKUP_BUCKETS,
            registry=r,
        )
        self.entries = Gauge(
            "pointsman_classifier_cache_entries",
            "Entries in this replica's vector index.",
            registry=r,
        )


class SemanticCache:
    def __init__(
        self,
        cfg: CacheConfig,
        registry: CollectorRegistry | None = None,
        name: str = "",
        security: RedisSecurity | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = name or uuid.uuid4().hex
        self.metrics = CacheMetrics(registry or CollectorRegistry())
        self.index = VectorIndex(backend=cfg.index, hnsw_from=cfg.hnsw_from, ef=cfg.hnsw_ef)
        self.metrics.entries.set_function(lambda: float(len(self.index)))
        timeout = cfg.redis_timeout_ms / 1000
        self.redis: aioredis.Redis = (security or RedisSecurity()).client(
            cfg.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=max(timeout, 0.2),
        )
        self.timeout = timeout
        self.bus: ServiceBus | None = None
        self._down_until = 0.0
        self._needs_rebuild = True
        self._tasks: set[asyncio.Task[Any]] = set()
        self._touched: dict[str, float] = {}
        p = cfg.key_prefix
        self._entry = f"{p}:e:"
        self._pending = f"{p}:p:"
        self._lru = f"{p}:lru"

    # -- lifecycle ------------------------------------------------------------------------------

    def subscribe(self, bus: ServiceBus) -> None:
        """Declare the cache's handlers on the replica's bus (before it starts): stores from
        the shim (one replica of the queue group each) and entry events (every replica); the
        replica's own events go out on the same bus."""
        self.bus = bus
        bus.subscriber(routes.CACHE_STORE)(self._on_store)
        bus.subscriber(routes.CACHE_EVENTS)(self._on_event)

    async def _on_store(self, msg: Received[CacheStore]) -> None:
        if msg.body is None:
            self.metrics.stores.labels("bad_message").inc()
            return
        self._spawn(self.store(msg.body))  # Redis round trips: do not hold up the next message

    async def _on_event(self, msg: Received[CacheEvent]) -> None:
        if msg.body is not None:
            self.apply_event(msg.body)

    def start(self) -> None:
        """Rebuild the index from Redis now and after outages; sweep expired entries."""
        self._spawn(self._maintain())

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks), limit_s=2)
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintain(self) -> None:
        """Rebuild the index from Redis at start and after an outage; drop expired entries."""
        next_sweep = time.monotonic() + 30.0
        while True:
            if self._needs_rebuild and time.monotonic() >= self._down_until:
                with contextlib.suppress(Exception):
                    await self.rebuild()
            if self._touched:
                await self.flush_touched()
            if time.monotonic() >= next_sweep:  # lookups skip expired entries anyway
                self.index.sweep()
                next_sweep = time.monotonic() + 30.0
            await asyncio.sleep(1.0)

    async def flush_touched(self) -> None:
        """One ZADD for every entry hit since the last flush. Best effort: a failure is counted
        but does not mark Redis down (the requests did not need it)."""
        touched, self._touched = self._touched, {}
        try:
            async with asyncio.timeout(1.0):
                await self.redis.zadd(self._lru, touched, xx=True)
        except (RedisError, OSError, TimeoutError):
            self.metrics.redis_errors.labels("touch").inc()

    async def rebuild(self) -> int:
        """Load every live entry of Redis into the index (SCAN in pages, then one bulk build per
        partition on a worker thread, so the event loop keeps answering meanwhile)."""
        now = time.time()
        found: dict[str, tuple[list[str], list[bytes], list[float]]] = {}
        try:
            async for keys in self._scan_pages():
                pipe = self.redis.pipeline(transaction=False)
                for k in keys:
                    pipe.hmget(k, "p", "v", "x")
                async with asyncio.timeout(max(self.timeout, 2.0)):
                    rows = await pipe.execute()
                for k, (part, vec, exp) in zip(keys, rows, strict=True):
                    if part is None or vec is None or exp is None or float(exp) <= now:
                        continue
                    key = _bytes(k).decode()[len(self._entry) :]
                    ids, vecs, exps = found.setdefault(_bytes(part).decode(), ([], [], []))
                    ids.append(key)
                    vecs.append(_bytes(vec))
                    exps.append(float(exp))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("rebuild", exc)
            raise
        added = 0
        for partition, (ids, vecs, exps) in found.items():
            dims = {len(v) for v in vecs}
            if len(dims) != 1 or (self.index.dim is not None and dims != {self.index.dim * 4}):
                continue  # another encoder's dimension: never comparable
            mat = np.frombuffer(b"".join(vecs), dtype="<f4").reshape(len(vecs), -1)
            mat = mat.astype(np.float32)
            part = await asyncio.to_thread(self.index.build, ids, mat)
            self.index.install(partition, part, ids, mat, exps)
            added += len(ids)
        self._needs_rebuild = False
        log.info("cache index rebuilt from Redis: %d entries", added)
        return added

    async def _scan_pages(self) -> Any:
        cursor: int = 0
        while True:
            async with asyncio.timeout(max(self.timeout, 2.0)):
                cursor, keys = await self.redis.scan(cursor, match=f"{self._entry}*", count=1000)
            if keys:
                yield keys
            if cursor == 0:
                return

    # -- Redis calls that never fail a request ---------------------------------------------------

    def _failed(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(op).inc()
        if time.monotonic() >= self._down_until:
            log.warning("cache: Redis %s failed (%s); no cache for %.1fs", op, exc, 1.0)
        self._down_until = time.monotonic() + self.cfg.redis_retry_s
        # Entries may have been evicted or stored while we could not see them.
        self._needs_rebuild = True

    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def _call(self, op: str, aw: Awaitable[T]) -> T:
        """``aw``'s result, or ``_FAILED`` (counted; Redis then rests ``redis_retry_s``)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(op, exc)
            result: T = _FAILED
            return result

    # -- lookup (hot path) -----------------------------------------------------------------------

    async def lookup(
        self,
        req: ClassifyRequest,
        reply: ClassifyReply,
        embedding: npt.NDArray[np.float32] | None,
    ) -> ClassifyReply:
        """Turn ``reply`` into a hit (``answer``) or mark it for storing (``cache_store``)."""
        started = time.perf_counter()
        p = plan(req, reply, self.cfg)
        category = reply.category or ""
        m = self.metrics
        if not (p.lookup or p.store) or embedding is None:
            if p.reason != "not_applicable":
                m.skips.labels(p.reason or "no_embedding").inc()
                m.lookups.labels("skip", category).inc()
            return reply
        if not self.available():
            m.lookups.labels("unavailable", category).inc()
            return reply
        if p.lookup:
            found = self.index.search(p.partition, embedding)
            if found is not None and found[1] >= p.threshold:
                key, sim = found
                raw = await self._call("get", self.redis.hget(self._entry + key, "a"))
                if raw is _FAILED:
                    m.lookups.labels("unavailable", category).inc()
                    return reply
                answer = _answer(raw)
                if answer is None:
                    self.index.remove(key)  # expired or evicted while we did not hear of it
                elif answer.partition == p.partition and answer.tenant == p.tenant:
                    self._hit(reply, answer, key, sim)
                    m.lookups.labels("hit", category).inc()
                    m.lookup_seconds.observe(time.perf_counter() - started)
                    return reply
        if p.store:
            token = uuid.uuid4().hex
            pending = Pending(
                tenant=p.tenant,
                partition=p.partition,
                model=reply.model,
                category=reply.category,
                embedding=np.ascontiguousarray(embedding, dtype="<f4").tobytes(),
            )
            ok = await self._call(
                "park",
                self.redis.set(
                    self._pending + token,
                    msgspec.msgpack.encode(pending),
                    px=int(self.cfg.pending_ttl_s * 1000),
                ),
            )
            if ok is not _FAILED:
                reply.cache_store = token
        reply.headers[H_CACHE] = "miss" if p.lookup else "bypass"
        m.lookups.labels("miss" if p.lookup else "bypass", category).inc()
        m.lookup_seconds.observe(time.perf_counter() - started)
        return reply

    def _hit(self, reply: ClassifyReply, a: StoredAnswer, key: str, sim: float) -> None:
        """The stored answer goes to the shim as it is; the shim renders it for the client."""
        reply.cached = CachedAnswer(**answer_text(a), similarity=sim)
        reply.headers[H_CACHE] = "hit"
        reply.headers[H_SIMILARITY] = f"{sim:.4f}"
        # LRU: a hit makes the entry recent again; written in batches, off the request's path.
        self._touched[key] = time.time()

    # -- store (from the shim, one replica per message) -------------------------------------------

    async def store(self, msg: CacheStore) -> str:
        """Write one answer; returns the result counted in ``stores_total``."""
        result = await self._store(msg)
        self.metrics.stores.labels(result).inc()
        return result

    async def _store(self, msg: CacheStore) -> str:
        if not 200 <= msg.status < 300:
            return "status"
        if not self.available():
            return "unavailable"
        raw = await self._call("take", self.redis.getdel(self._pending + msg.token))
        if raw is _FAILED:
            return "unavailable"
        if raw is None:
            return "unknown_token"
        pend = msgspec.msgpack.decode(_bytes(raw), type=Pending)
        answer = StoredAnswer(
            content=msg.content,
            role=msg.role,
            finish_reason=msg.finish_reason,
            prompt_tokens=msg.prompt_tokens,
            completion_tokens=msg.completion_tokens,
            model=pend.model,
            category=pend.category,
            tenant=pend.tenant,
            partition=pend.partition,
        )
        why = storable(answer, self.cfg)
        if why:
            return why
        now = time.time()
        ttl = self.cfg.ttl_s
        expires = now + ttl
        key = msg.token
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            self._entry + key,
            mapping={
                "a": msgspec.json.encode(answer),
                "v": pend.embedding,
                "p": pend.partition,
                "x": repr(expires),
            },
        )
        pipe.pexpire(self._entry + key, int(ttl * 1000))
        pipe.zadd(self._lru, {key: now})
        pipe.zremrangebyscore(self._lru, "-inf", now - ttl)
        pipe.zcard(self._lru)
        out = await self._call("store", pipe.execute())
        if out is _FAILED:
            return "unavailable"
        await self._publish(
            CacheEvent(
                op="add",
                id=key,
                partition=pend.partition,
                embedding=pend.embedding,
                expires_at=expires,
                origin=self.name,
            )
        )
        excess = int(out[-1]) - self.cfg.max_entries
        if excess > 0:
            await self._evict(excess)
        return "stored"

    async def _evict(self, count: int) -> None:
        popped = await self._call("evict", self.redis.zpopmin(self._lru, count))
        if popped is _FAILED or not popped:
            return
        ids = [_bytes(item[0]).decode() for item in list(popped)]
        await self._call("evict", self.redis.delete(*[self._entry + i for i in ids]))
        self.metrics.evictions.inc(len(ids))
        for i in ids:
            await self._publish(CacheEvent(op="remove", id=i, origin=self.name))

    async def _publish(self, event: CacheEvent) -> None:
        """Announce to every replica, this one included (it hears its own events back); with
        no bus, or the bus down, apply it here: the entry is in Redis and the other replicas
        find it at their next rebuild."""
        route = routes.CACHE_EVENTS
        if self.bus is None or not await self.bus.publish(route.subject, route.encode(event)):
            if self.bus is not None:
                log.warning("cache event %s not published; applied locally", event.id)
            self.apply_event(event)

    def apply_event(self, ev: CacheEvent) -> None:
        if ev.op == "remove":
            self.index.remove(ev.id)
        elif ev.embedding and ev.expires_at > time.time():
            try:
                self.index.add(ev.id, ev.partition, _vector(ev.embedding), ev.expires_at)
            except ValueError as exc:
                log.warning("cache event %s ignored: %s", ev.id, exc)


def _bytes(raw: Any) -> bytes:
    return raw if isinstance(raw, bytes) else str(raw).encode()


def _vector(raw: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def _answer(raw: Any) -> StoredAnswer | None:
    if raw is None:
        return None
    try:
        return msgspec.json.decode(raw, type=StoredAnswer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
