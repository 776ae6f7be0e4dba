"""Sessions that stay put: a follow-up turn of an ``auto`` conversation keeps the category (and
so the model, its reasoning and system prompt) an earlier turn chose, unless the new turn is
clearly about something else.

Users of semantic routers see a conversation bounce between models: a follow-up such as "commit
it" is classified on its own and goes to a cheap model. Here the shim tells the classifier which
conversation a request belongs to (``ClassifyRequest.session``, see the shim's
``core/sessions.py``) and whether it continues one (``follow_up``). The last turn's choice lives
in Redis, shared by every classifier replica, under ``sessions.turn_ttl_s`` (refreshed by each
turn). :func:`stick` decides, purely:

* no earlier choice (a first turn, an expired session): ``new``, classified as usual;
* the new turn's category is the earlier one: ``kept``;
* it differs, and the new category's probability exceeds the earlier category's probability
  *on this turn* by at least ``sessions.margin``: ``switched``;
* it differs by less: ``kept``, the earlier category stands.

The verdict is reported in ``x-pointsman-session-model`` (``unavailable`` when Redis did not
answer: the turn is then classified on its own). Redis failing or slow degrades to no
stickiness, counted, and is left alone for ``redis_retry_s`` after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import redis.asyncio as aioredis
from pydantic import ConfigDict, Field

from pointsman.redisconf import RedisBacked, RedisSecurity
from pointsman.redisstore import RedisDown, RestingRedis

log = logging.getLogger(__name__)

H_SESSION_MODEL = "x-pointsman-session-model"


class SessionsConfig(RedisBacked):
    """The ``classifier.sessions`` section (``redis_url``, ``redis_timeout_ms``,
    ``redis_retry_s``: see :class:`RedisBacked`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Keep a session's model across turns (needs Redis, shared by the classifier replicas).
    enabled: bool = False
    key_prefix: str = "pointsman:session"
    #: A follow-up switches category only when the new category's probability exceeds the
    #: earlier category's by at least this much.
    margin: float = Field(default=0.3, ge=0, le=1)
    #: Seconds a session's choice is remembered after its last turn.
    turn_ttl_s: float = Field(default=1800.0, gt=0)


class Choice(msgspec.Struct, kw_only=True):
    """What a session remembers of its last ``auto`` turn."""

    category: str
    model: str = ""


def stick(
    previous: Choice | None,
    fresh: str | None,
    categories: dict[str, float] | None,
    margin: float,
) -> tuple[str | None, str]:
    """(the category to keep, or ``None`` to take the fresh one; the verdict)."""
    if previous is None:
        return None, "new"
    if fresh is None or fresh == previous.category:
        return previous.category, "kept"
    probs = categories or {}
    if probs.get(fresh, 0.0) - probs.get(previous.category, 0.0) >= margin:
        return None, "switched"
    return previous.category, "kept"


class SessionStore:
    """The sessions' choices in Redis; reads answer ``None`` when Redis does not."""

    def __init__(self, cfg: SessionsConfig, security: RedisSecurity | None = None) -> None:
        self.cfg = cfg
        self._store = RestingRedis(
            cfg.redis_url,
            security,
            timeout_s=cfg.redis_timeout_ms / 1000,
            retry_s=cfg.redis_retry_s,
        )
        self.redis: aioredis.Redis = self._store.redis
        self._tasks: set[asyncio.Task[None]] = set()

    def _key(self, session: str) -> str:
        return f"{self.cfg.key_prefix}:{session}"

    async def get(self, session: str) -> tuple[Choice | None, bool]:
        """(the session's last choice, whether Redis answered)."""
        raw = await self._call(self.redis.get(self._key(session)))
        if raw is _FAILED:
            return None, False
        if raw is None:
            return None, True
        try:
            return msgspec.json.decode(raw, type=Choice), True
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None, True

    def remember(self, session: str, choice: Choice) -> None:
        """Write the turn's choice off the request's path."""
        value = msgspec.json.encode(choice)
        ttl = int(self.cfg.turn_ttl_s * 1000)
        task = asyncio.ensure_future(self._call(self.redis.set(self._key(session), value, px=ttl)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, aw: Any) -> Any:
        try:
            return await self._store.call(aw)
        except RedisDown as down:
            if down.cause is not None:
                log.warning(
                    "sessions: Redis failed (%s); no stickiness for %.1fs",
                    down.cause,
                    self.cfg.redis_retry_s,
                )
            return _FAILED

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        with contextlib.suppress(Exception):
            await self.redis.aclose()


_FAILED = object()
