"""RestingRedis: the deadline and the rest after a failure that the shim's Responses store and
the classifier's sessions share (their Redis-backed tests cover them end to end)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from pointsman.redisstore import RedisDown, RestingRedis


def _client(retry_s: float = 3600.0) -> RestingRedis:
    # No connection is made: every call below is a local coroutine.
    return RestingRedis("redis://127.0.0.1:1/0", None, timeout_s=0.05, retry_s=retry_s)


async def _answer(value: str) -> str:
    return value


async def _refused() -> str:
    raise RedisConnectionError("refused")


async def _hangs() -> str:
    await asyncio.Event().wait()
    return "never"


async def test_an_answer_passes_through() -> None:
    assert await _client().call(_answer("x")) == "x"


@pytest.mark.parametrize(
    ("failing", "cause"), [(_refused, "ConnectionError"), (_hangs, "TimeoutError")]
)
async def test_a_failure_names_its_cause_then_redis_rests(
    failing: Callable[[], Coroutine[Any, Any, str]], cause: str
) -> None:
    client = _client()
    with pytest.raises(RedisDown) as first:
        await client.call(failing())
    assert first.value.cause == cause
    # Resting: the next call is not made (its coroutine is closed, never awaited).
    pending = _answer("late")
    with pytest.raises(RedisDown) as second:
        await client.call(pending)
    assert second.value.cause is None
    assert inspect.getcoroutinestate(pending) == inspect.CORO_CLOSED


async def test_without_a_rest_the_next_call_is_made() -> None:
    client = _client(retry_s=0.0)
    with pytest.raises(RedisDown):
        await client.call(_refused())
    assert await client.call(_answer("y")) == "y"
