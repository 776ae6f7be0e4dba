"""The shim's usage reader on what real vLLM 0.32 sends, split into chunks the way a network may."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman_shim.core.dialects.base import Usage
from pointsman_shim.core.dialects.openai import error_body
from pointsman_shim.core.dialects.openai_usage import UsageReader
from tests.compat.fixtures import headers, raw, sse_events, sse_json

NON_STREAMING = ["chat.json", "completions.json"]
STREAMING = ["chat_stream.sse", "completions_stream.sse"]
ALL = NON_STREAMING + STREAMING


def expected_usage(name: str) -> Usage:
    """What vLLM reported, read with json and a plain SSE split (not the reader under test)."""
    body = raw(name)
    if name.endswith(".sse"):
        reported = [c["usage"] for c in sse_json(body) if c.get("usage")]
        assert len(reported) == 1, "vLLM sends usage once, in the last chunk, with include_usage"
        usage: dict[str, Any] = reported[0]
    else:
        usage = json.loads(body)["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    return Usage(usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])


def read(name: str, cuts: list[int]) -> UsageReader:
    """Feed the fixture to a reader configured as the shim would from vLLM's content-type."""
    body = raw(name)
    _, hdrs = headers(name.rsplit(".", 1)[0])
    reader = UsageReader(sse=hdrs["content-type"].startswith("text/event-stream"))
    start = 0
    for cut in [*sorted({c % (len(body) + 1) for c in cuts}), len(body)]:
        reader.feed(body[start:cut])
        start = cut
    reader.finish()
    return reader


@pytest.mark.parametrize("name", ALL)
def test_content_type_selects_the_right_mode(name: str) -> None:
    status, hdrs = headers(name.rsplit(".", 1)[0])
    assert status == 200
    # The shim decides SSE vs JSON from the content-type alone (handlers._response_headers).
    assert hdrs["content-type"].startswith("text/event-stream") == name.endswith(".sse")


@pytest.mark.parametrize("name", ALL)
def test_whole_body_in_one_chunk(name: str) -> None:
    assert read(name, []).usage == expected_usage(name)


@pytest.mark.parametrize("name", ALL)
def test_one_byte_at_a_time(name: str) -> None:
    assert read(name, list(range(len(raw(name))))).usage == expected_usage(name)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=100_000), max_size=40))
def test_arbitrary_chunk_splits(name: str, cuts: list[int]) -> None:
    assert read(name, cuts).usage == expected_usage(name)


@pytest.mark.parametrize("name", STREAMING)
def test_stream_chunks_are_counted(name: str) -> None:
    events = sse_events(raw(name))
    assert events[-1] == b"[DONE]"
    assert read(name, [7, 100, 101]).chunks == len(events) - 1


@pytest.mark.parametrize("name", ["unknown_model", "malformed_json"])
def test_error_bodies_have_no_usage_and_match_the_shim_error_shape(name: str) -> None:
    status, hdrs = headers(name)
    assert status in (400, 404)
    assert hdrs["content-type"].startswith("application/json")
    body = raw(f"{name}.json")
    reader = UsageReader(sse=False)
    reader.feed(body)
    assert reader.finish() is None
    # The shim answers its own rejections "as OpenAI and vLLM send it": same keys as vLLM's.
    ours = json.loads(error_body("x", type="invalid_request_error", code="x"))
    theirs = json.loads(body)
    assert set(ours) == set(theirs) == {"error"}
    assert set(ours["error"]) == set(theirs["error"])


def test_stream_without_include_usage_reports_none() -> None:
    """Without ``stream_options.include_usage`` vLLM sends no usage key at all."""
    body = raw("chat_stream_no_usage.sse")
    chunks = sse_json(body)
    assert chunks and not any("usage" in c for c in chunks)
    reader = read("chat_stream_no_usage.sse", [3, 50, 51, 400])
    assert reader.usage is None
    assert reader.chunks == len(chunks)
