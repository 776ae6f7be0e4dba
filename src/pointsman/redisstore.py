"""A Redis client for a store that must never hold a request up.

The shim's Responses store and the classifier's sessions both keep optional state in Redis on the
request path: each call has a deadline, and after a failure Redis is left alone for a while
(calls then fail at once), so that while it is down requests do not each pay the timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from pointsman.redisconf import RedisSecurity

T = TypeVar("T")


class RedisDown(Exception):
    """A :meth:`RestingRedis.call` that got no answer. ``cause`` names the failure (the
    exception's type), or is ``None`` when Redis was resting after an earlier one and the call
    was not made."""

    def __init__(self, cause: str | None) -> None:
        super().__init__(cause or "resting after a failure")
        self.cause = cause


class RestingRedis:
    """``redis``: the client for ``url`` (``security``'s identity and TLS), with ``timeout_s`` as
    its socket timeout; :meth:`call` adds the deadline and the rest of ``retry_s`` after a
    failure."""

    def __init__(
        self, url: str, security: RedisSecurity | None, *, timeout_s: float, retry_s: float
    ) -> None:
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.redis: aioredis.Redis = (security or RedisSecurity()).client(
            url, socket_timeout=timeout_s, socket_connect_timeout=max(timeout_s, 0.2)
        )
        self._down_until = 0.0

    async def call(self, aw: Awaitable[T]) -> T:
        """``aw``'s result (a call on :attr:`redis`); raises :class:`RedisDown` when it fails or
        passes the deadline (Redis then rests ``retry_s``), or at once, closing ``aw``, while
        Redis rests."""
        if time.monotonic() < self._down_until:
            if asyncio.iscoroutine(aw):
                aw.close()
            raise RedisDown(None)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await aw
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.retry_s
            raise RedisDown(type(exc).__name__) from None
