"""The classifier's session store against a real redis-server."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from pointsman_classifier.sessions import Choice, SessionsConfig, SessionStore
from tests.helpers import procs

pytestmark = pytest.mark.integration


async def test_a_choice_is_shared_and_expires(redis_url: str) -> None:
    cfg = SessionsConfig(
        redis_url=redis_url, key_prefix=f"t:{uuid.uuid4().hex[:6]}", turn_ttl_s=0.5
    )
    one, two = SessionStore(cfg), SessionStore(cfg)  # two replicas
    assert await one.get("s1") == (None, True)
    one.remember("s1", Choice(category="math", model="qwen3-8b"))
    await asyncio.wait(list(one._tasks), timeout=5)
    assert await two.get("s1") == (Choice(category="math", model="qwen3-8b"), True)
    deadline = time.monotonic() + 60
    while (await two.get("s1"))[0] is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await one.close()
    await two.close()


async def test_redis_down_is_no_stickiness_not_a_hang() -> None:
    with procs.redis_server() as url:
        store = SessionStore(SessionsConfig(redis_url=url, redis_timeout_ms=200, redis_retry_s=30))
    started = time.monotonic()
    assert await store.get("s1") == (None, False)
    assert await store.get("s1") == (None, False)  # resting: not even tried
    store.remember("s1", Choice(category="math"))
    await store.close()
    assert time.monotonic() - started < 10
