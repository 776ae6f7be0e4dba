"""The shim's reassembly of upstream answers for the cache: only complete, single text answers."""

from __future__ import annotations

import json

from pointsman_shim.core.dialects.base import Filled
from pointsman_shim.core.dialects.openai_fill import Reassembler


def sse(*chunks: object, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(
    content: str | None = None, finish: str | None = None, **extra: object
) -> dict[str, object]:
    d: dict[str, object] = dict(extra)
    if content is not None:
        d["content"] = content
    return {"choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def run(raw: bytes, *, sse_mode: bool = True, max_bytes: int = 1000) -> Filled | None:
    r = Reassembler(sse=sse_mode, max_bytes=max_bytes)
    r.feed(raw)
    return r.finish()


def test_stream_reassembled() -> None:
    raw = sse(
        delta("", role="assistant"),
        delta("Hel"),
        delta("lo"),
        delta(None, "stop"),
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    )
    got = run(raw)
    assert got is not None
    assert (got.content, got.role, got.finish_reason, got.prompt_tokens) == (
        "Hello",
        "assistant",
        "stop",
        3,
    )


def test_incomplete_or_odd_streams_are_not_stored() -> None:
    assert run(sse(delta("Hel"), delta(None, "stop"), done=False)) is None  # no [DONE]
    assert run(sse(delta("Hel"))) is None  # no finish_reason
    tool = delta(None, tool_calls=[{"index": 0, "function": {"name": "f"}}])
    assert run(sse(tool, delta(None, "tool_calls"))) is None
    two = {"choices": [{"index": 1, "delta": {"content": "x"}, "finish_reason": None}]}
    assert run(sse(two, delta(None, "stop"))) is None
    assert run(sse(delta("x" * 2000), delta(None, "stop"))) is None  # over the bound
    assert run(b"data: {not json\n\n") is None
    assert run(sse({"error": {"message": "boom"}})) is None


def test_json_body() -> None:
    body = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
    got = run(json.dumps(body).encode(), sse_mode=False)
    assert got is not None and got.content == "Hi" and got.finish_reason == "stop"
    text = {"choices": [{"index": 0, "text": "Hi", "finish_reason": "length"}]}
    got = run(json.dumps(text).encode(), sse_mode=False)
    assert got is not None and got.finish_reason == "length"
    two = {"choices": [body["choices"][0], body["choices"][0]]}  # type: ignore[index]
    assert run(json.dumps(two).encode(), sse_mode=False) is None
    assert run(b"{truncated", sse_mode=False) is None
