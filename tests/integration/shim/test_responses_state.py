"""The Responses API's store against a real redis-server: records, tenants, TTL, Redis down."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from pointsman_shim.config import ResponsesStore
from pointsman_shim.state import ResponsesState, StateUnavailable
from tests.helpers import procs

pytestmark = pytest.mark.integration


def state(redis_url: str, **config: object) -> ResponsesState:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    return ResponsesState(ResponsesStore(redis_url=redis_url, key_prefix=prefix, **config))  # type: ignore[arg-type]


def response(rid: str, text: str) -> dict[str, object]:
    item = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text}],
    }
    return {"id": rid, "object": "response", "output": [item, {"type": "web_search_call"}]}


async def test_a_turn_and_its_response_make_the_next_turns_conversation(redis_url: str) -> None:
    s = state(redis_url)
    asked = [{"type": "message", "role": "user", "content": "hi"}]
    s.keep_turn("t1", asked, "c:abc", "tenant-a")
    s.keep_response(response("resp_1", "hello"), "t1", "tenant-a")
    await s.drain()
    kept = await s.conversation("resp_1", "tenant-a")
    assert kept is not None and kept.session == "c:abc"
    assert [i["role"] for i in kept.items] == ["user", "assistant"]  # the search call is not input
    assert await s.response("resp_1", "tenant-a") == response("resp_1", "hello")
    # another tenant sees nothing, and cannot delete it
    assert await s.response("resp_1", "tenant-b") is None
    assert await s.conversation("resp_1", "tenant-b") is None
    assert not await s.delete("resp_1", "tenant-b")
    assert await s.delete("resp_1", "tenant-a")
    assert await s.response("resp_1", "tenant-a") is None
    assert await s.conversation("resp_1", "tenant-a") is None
    await s.close()


async def test_records_expire(redis_url: str) -> None:
    s = state(redis_url, ttl_s=0.3)
    s.keep_turn("t", [], None, "")
    s.keep_response(response("resp_2", "x"), "t", "")
    await s.drain()
    assert await s.response("resp_2", "") is not None
    deadline = time.monotonic() + 60
    while await s.response("resp_2", "") is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await s.close()


async def test_redis_down_answers_at_once_then_rests() -> None:
    """A Redis that is gone is a clear StateUnavailable, within the deadline, never a hang; for
    redis_retry_s after, calls fail without trying; writes are dropped."""
    with procs.redis_server() as url:
        s = state(url, redis_timeout_ms=200, redis_retry_s=30)
        s.keep_turn("t", [], None, "")
        await s.drain()
    started = time.monotonic()
    with pytest.raises(StateUnavailable):
        await s.response("resp_x", "")
    with pytest.raises(StateUnavailable):
        await s.conversation("resp_x", "")
    s.keep_response(response("resp_x", "x"), "t", "")
    await s.drain()
    assert time.monotonic() - started < 10  # generous: a busy machine, but not a hang
    await s.close()


async def test_no_store_configured() -> None:
    s = ResponsesState(ResponsesStore(redis_url=""))
    assert not s.enabled
    with pytest.raises(StateUnavailable, match="no response store"):
        await s.response("resp_x", "")
    await s.close()


async def test_a_lookup_waits_for_a_response_still_being_kept(redis_url: str) -> None:
    """The client can continue before the stream that read the answer has kept it (observer
    streams end after the client's response; another replica may write it): a lookup that
    finds nothing waits up to pending_wait_ms for the record instead of answering 404."""
    reader = state(redis_url, pending_wait_ms=5000)
    writer = ResponsesState(reader.config)  # another replica: same Redis and prefix
    writer.keep_turn("t", [{"type": "message", "role": "user", "content": "hi"}], None, "")
    await writer.drain()

    async def keep_later() -> None:
        await asyncio.sleep(0.2)
        writer.keep_response(response("resp_late", "hello"), "t", "")
        await writer.drain()

    late = asyncio.create_task(keep_later())
    kept = await reader.conversation("resp_late", "")
    await late
    assert kept is not None and [i["role"] for i in kept.items] == ["user", "assistant"]
    # an id nobody keeps is still unknown, once the wait is over
    assert await state(redis_url, pending_wait_ms=50).response("resp_never", "") is None
    await reader.close()
    await writer.close()
