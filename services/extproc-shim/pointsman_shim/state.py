"""The Responses API's state in Redis: kept responses and the conversations they continue.

Two records, both under ``shim.responses.ttl_s``:

* a **turn** (``{prefix}:t:{key}``, written by the decision, off the critical path): the input
  items the request's answer continues from (earlier turns included, ``instructions`` not), its
  session identity and its tenant. ``key`` is a fresh id of the shim's, never a client's;
* a **response** (``{prefix}:r:{id}``, written when the answer ended, by whichever stream read it:
  the observer for a native pool, the decision stream for a translated one): the response
  object, its turn's key and its tenant.

A turn that continues response ``r`` reads both (two round trips): the turn's items, then ``r``'s
output items, are the conversation the engine gets before the new input. Each turn keeps its
whole conversation, so a later turn never walks a chain; storage grows with the square of a
conversation's length, bounded by the TTL. Another tenant's records read as missing.

Redis down or slow (past ``redis_timeout_ms``) raises :class:`StateUnavailable` (the handler
answers 503), and Redis is then left alone for ``redis_retry_s``, so requests do not each wait
for the deadline; writes are dropped (counted), and the answers they belong to still reach the
client. Stateless requests never touch Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import msgspec
import redis.asyncio as aioredis

from pointsman.redisconf import RedisSecurity
from pointsman.redisstore import RedisDown, RestingRedis
from pointsman_shim import metrics
from pointsman_shim.config import ResponsesStore
from pointsman_shim.core.dialects.responses_answer import history_of

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Seconds between two looks for a response that is being kept (see ``_pending``).
PENDING_POLL_S = 0.02


class StateUnavailable(Exception):
    """Redis is down, slow, or not configured: the stateful call cannot be answered now."""


class Turn(msgspec.Struct, kw_only=True):
    items: list[Any]
    session: str | None = None
    tenant: str = ""


class Kept(msgspec.Struct, kw_only=True):
    response: dict[str, Any]
    turn: str = ""
    tenant: str = ""


class Conversation(msgspec.Struct, kw_only=True):
    """What a continuing turn needs of the response it continues."""

    items: list[Any]
    session: str | None = None


class ResponsesState:
    """The shim's Redis adapter for the Responses API; one per shim process."""

    def __init__(self, config: ResponsesStore, security: RedisSecurity | None = None) -> None:
        """``security``: the ``redis:`` section (ACL user, password file, TLS)."""
        self.config = config
        self._store = (
            RestingRedis(
                config.redis_url,
                security,
                timeout_s=config.redis_timeout_ms / 1000,
                retry_s=config.redis_retry_s,
            )
            if config.redis_url
            else None
        )
        self.redis: aioredis.Redis | None = self._store.redis if self._store else None
        self._turns = f"{config.key_prefix}:t:"
        self._responses = f"{config.key_prefix}:r:"
        self._tasks: set[asyncio.Task[None]] = set()
        self._encoder = msgspec.json.Encoder()

    @property
    def enabled(self) -> bool:
        return self.redis is not None

    # -- reads (on the request path: failures raise) -------------------------------------------

    async def response(self, rid: str, tenant: str) -> dict[str, Any] | None:
        """A kept response object, ``None`` if unknown, expired or another tenant's."""
        kept = await self._kept(rid, tenant, "get")
        return kept.response if kept is not None else None

    async def conversation(self, rid: str, tenant: str) -> Conversation | None:
        """The conversation response ``rid`` ends (``None``: unknown, expired, another's)."""
        kept = await self._kept(rid, tenant, "previous")
        if kept is None:
            return None
        raw = await self._call("previous", self._redis().get(self._turns + kept.turn))
        if raw is None:
            metrics.STORE.labels("previous", "not_found").inc()
            return None
        turn = msgspec.json.decode(raw, type=Turn)
        metrics.STORE.labels("previous", "ok").inc()
        items = [*turn.items, *history_of(kept.response)]
        return Conversation(items=items, session=turn.session)

    async def delete(self, rid: str, tenant: str) -> bool:
        kept = await self._kept(rid, tenant, "delete")
        if kept is None:
            return False
        keys = [self._responses + rid]
        if kept.turn:
            keys.append(self._turns + kept.turn)
        await self._call("delete", self._redis().delete(*keys))
        metrics.STORE.labels("delete", "ok").inc()
        return True

    async def _kept(self, rid: str, tenant: str, op: str) -> Kept | None:
        raw = await self._call(op, self._redis().get(self._responses + rid))
        if raw is None and self.config.pending_wait_ms > 0:
            raw = await self._pending(rid, op)
        kept = None
        if raw is not None:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                kept = msgspec.json.decode(raw, type=Kept)
        if kept is None or kept.tenant != tenant:
            metrics.STORE.labels(op, "not_found").inc()
            return None
        if op == "get":
            metrics.STORE.labels(op, "ok").inc()
        return kept

    async def _pending(self, rid: str, op: str) -> bytes | str | None:
        """A response the client already has may not be kept yet: its record is written when
        the stream that read the answer ends (the observer's may end after the client's), so a
        client that continues at once can ask before it lands. Wait for this replica's writes in
        flight, then look again every :data:`PENDING_POLL_S` for ``pending_wait_ms`` before
        calling it unknown (an unknown id's 404 takes that long)."""
        deadline = time.monotonic() + self.config.pending_wait_ms / 1000
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.pending_wait_ms / 1000)
        while True:
            raw = await self._call(op, self._redis().get(self._responses + rid))
            if raw is not None:
                metrics.STORE.labels(op, "pending").inc()
                return raw
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await asyncio.sleep(min(PENDING_POLL_S, left))

    # -- writes (off the critical path: failures are counted and dropped) -----------------------

    def keep_turn(self, key: str, items: list[Any], session: str | None, tenant: str) -> None:
        turn = Turn(items=items, session=session, tenant=tenant)
        self._spawn(self._write("turn", self._turns + key, self._encoder.encode(turn)))

    def keep_response(self, response: dict[str, Any], turn: str, tenant: str) -> None:
        rid = response.get("id")
        if not isinstance(rid, str) or not rid:
            return
        kept = Kept(response=response, turn=turn, tenant=tenant)
        self._spawn(self._write("response", self._responses + rid, self._encoder.encode(kept)))

    async def _write(self, op: str, key: str, value: bytes) -> None:
        try:
            await self._call(op, self._redis().set(key, value, px=int(self.config.ttl_s * 1000)))
        except StateUnavailable:
            return  # counted by _call
        metrics.STORE.labels(op, "ok").inc()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the writes in flight (tests, shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    # -- Redis -----------------------------------------------------------------------------------

    def _resting(self) -> RestingRedis:
        if self._store is None:
            raise StateUnavailable("no response store is configured (shim.responses.redis_url)")
        return self._store

    def _redis(self) -> aioredis.Redis:
        return self._resting().redis

    async def _call(self, op: str, aw: Awaitable[T]) -> T:
        try:
            return await self._resting().call(aw)
        except RedisDown as down:
            metrics.STORE.labels(op, "unavailable").inc()
            if down.cause is not None:
                log.warning(
                    "response store: Redis %s failed (%s); unavailable for %.1fs",
                    op,
                    down.cause,
                    self.config.redis_retry_s,
                )
            raise StateUnavailable("the response store is unavailable") from None

    async def close(self) -> None:
        await self.drain()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()
