"""Shared state across picker replicas, in Redis, written behind the hot path.

Every replica keeps the full state in memory (:mod:`pointsman_picker.state`) and decides from
it alone. What one replica's decisions teach (assignments, prefix blocks, sessions) is buffered
and, every ``flush_interval_ms``, sent in one pipeline:

* ``PUBLISH {prefix}:sync`` carries the batch to the other replicas, which apply it to their
  memory (a few milliseconds behind the decision);
* the prefix index (``ZSET {prefix}:prefix:{pool}|{endpoint}``, block hash -> last use, trimmed
  to the LRU capacity) and the sessions (``{prefix}:session:{pool}|{id}`` with a TTL) persist,
  so a replica that starts later loads them and decides like the others from its first pick.

In-flight assignments only matter until the next metrics scrape (~100 ms), so they travel on
the channel and are not stored. Redis being slow or down never delays a pick: the buffer is
bounded and a failed flush is counted and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from pointsman.redisconf import RedisSecurity
from pointsman.runtime import cancel_and_wait, retry
from pointsman_picker.config import SharedStateConfig
from pointsman_picker.core.framework import PrefixStored, SessionBound, Update
from pointsman_picker.telemetry import Telemetry

log = logging.getLogger(__name__)

_MAX_BUFFER = 20_000


class SyncBatch(msgspec.Struct, frozen=True):
    replica: str
    updates: list[Update]


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(SyncBatch)


class RedisSync:
    def __init__(
        self,
        url: str,
        config: SharedStateConfig,
        replica_id: str,
        on_remote: Callable[[Sequence[Update]], None],
        telemetry: Telemetry,
        security: RedisSecurity | None = None,
    ) -> None:
        timeout = config.timeout_ms / 1000.0
        self._redis: Any = (security or RedisSecurity()).client(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._cfg = config
        self._replica = replica_id
        self._on_remote = on_remote
        self._t = telemetry
        self._kp = config.key_prefix
        self._channel = f"{self._kp}:sync"
        self._buf: list[Update] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()
        self.received = 0

    @property
    def client(self) -> Any:
        """The Redis client (flow control's counter exchange shares it)."""
        return self._redis

    # --- the hot path's side: O(1), no await ----------------------------------------------

    def submit(self, updates: Sequence[Update]) -> None:
        self._buf.extend(updates)
        if len(self._buf) > _MAX_BUFFER:
            dropped = len(self._buf) - _MAX_BUFFER
            del self._buf[:dropped]
            self._t.sync_errors.labels("buffer_full").inc(dropped)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, load: Callable[[Sequence[Update]], None]) -> None:
        """Subscribe first, then load persisted state, so nothing falls between the two."""
        self._tasks.append(asyncio.create_task(self._listen()))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self._subscribed.wait()
        try:
            load(await self._load())
        except Exception as exc:
            self._t.sync_errors.labels("load").inc()
            log.warning("shared state: could not load from redis: %s", exc)
        self._tasks.append(asyncio.create_task(self._flush_loop()))

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._flush()
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self._redis.aclose()

    # --- writing behind ----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        interval = self._cfg.flush_interval_ms / 1000.0
        while True:
            await asyncio.sleep(interval)
            if self._buf:
                try:
                    await self._flush()
                except Exception as exc:
                    self._t.sync_errors.labels("flush").inc()
                    log.warning("shared state: flush failed: %s", exc)

    async def _flush(self) -> None:
        batch, self._buf = self._buf, []
        if not batch:
            return
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        pipe.publish(self._channel, _ENC.encode(SyncBatch(self._replica, batch)))
        blocks: dict[str, tuple[dict[str, float], int]] = {}
        for u in batch:
            if isinstance(u, PrefixStored):
                key = f"{self._kp}:prefix:{u.pool}|{u.endpoint}"
                members, _ = blocks.get(key, ({}, 0))
                for h in u.hashes:
                    members[format(h, "x")] = now
                blocks[key] = (members, u.capacity)
            elif isinstance(u, SessionBound):
                pipe.set(
                    f"{self._kp}:session:{u.pool}|{u.session}",
                    f"{u.endpoint}|{u.at}|{u.ttl_s}",
                    px=max(1, int(u.ttl_s * 1000)),
                )
        for key, (members, capacity) in blocks.items():
            pipe.zadd(key, members)
            pipe.zremrangebyrank(key, 0, -(capacity + 1))
        await pipe.execute()

    # --- reading ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        """The sync channel's subscription, restarted after each failure (backoff to 5 s)."""
        await retry(
            "shared state: subscription",
            self._listen_once,
            delay=0.1,
            max_delay=5.0,
            on_error=lambda _: self._t.sync_errors.labels("subscribe").inc(),
        )

    async def _listen_once(self) -> None:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self._subscribed.set()
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None or msg.get("type") != "message":
                    continue
                self._apply(msg["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def _apply(self, data: bytes) -> None:
        try:
            batch = _DEC.decode(data)
        except msgspec.DecodeError:
            self._t.sync_errors.labels("decode").inc()
            return
        if batch.replica == self._replica:
            return
        self.received += 1
        self._on_remote(batch.updates)

    async def _load(self) -> list[Update]:
        out: list[Update] = []
        prefix_keys = [k async for k in self._redis.scan_iter(match=f"{self._kp}:prefix:*")]
        if prefix_keys:
            pipe = self._redis.pipeline(transaction=False)
            for key in prefix_keys:
                pipe.zrange(key, 0, -1)
            for key, members in zip(prefix_keys, await pipe.execute(), strict=True):
                pool, _, endpoint = key.decode()[len(self._kp) + 8 :].rpartition("|")
                hashes = tuple(int(m, 16) for m in members)
                out.append(PrefixStored(pool, endpoint, hashes, max(len(hashes), 1)))
        session_keys = [k async for k in self._redis.scan_iter(match=f"{self._kp}:session:*")]
        if session_keys:
            values = await self._redis.mget(session_keys)
            for key, value in zip(session_keys, values, strict=True):
                if value is None:
                    continue
                pool, _, sid = key.decode()[len(self._kp) + 9 :].rpartition("|")
                endpoint, at, ttl = value.decode().rsplit("|", 2)
                out.append(SessionBound(pool, sid, endpoint, float(at), float(ttl)))
        log.info("shared state: loaded %d prefix indexes, %d sessions",
                 len(prefix_keys), len(session_keys))  # fmt: skip
        return out
