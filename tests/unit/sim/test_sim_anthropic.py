"""The Messages API's pure parts: blocks -> messages, request checks, the message and events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pointsman.sim.anthropic import (
    MessageWriter,
    chat_messages,
    count_tokens_body,
    parse_messages,
)
from pointsman.sim.config import SimConfig
from pointsman.sim.openai import ApiError
from pointsman.sim.tokens import count_tokens, render_chat

CFG = SimConfig(model="base", max_model_len=1000, default_max_tokens=50)
USER = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "base", **fields}).encode()


def test_blocks_become_chat_messages() -> None:
    data = {
        "system": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hm"},
                {"type": "tool_use", "id": "t", "name": "w", "input": {"c": "x"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "sun"}]},
                {"type": "image", "source": {}},
            ]},
        ],
    }  # fmt: skip
    assert chat_messages(data) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": 'hmw({"c":"x"})'},
        {"role": "user", "content": "sun"},
    ]


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"messages": USER}, 400, "body.max_tokens"),
        ({}, 400, "body.messages"),
        ({"messages": "hi", "max_tokens": 1}, 400, "body.messages"),
        (
            {"messages": [{"role": "system", "content": "x"}], "max_tokens": 1},
            400,
            "body.messages.0",
        ),
        ({"messages": USER, "max_tokens": 0}, 400, "max_tokens"),
        ({"messages": USER, "max_tokens": 1, "system": 3}, 400, "body.system"),
        ({"messages": USER, "max_tokens": 1, "model": "nope"}, 404, "model"),
    ],
)
def test_bad_requests(fields: dict[str, Any], status: int, param: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_messages(body(**fields), CFG)
    assert (info.value.status, info.value.param) == (status, param)


def test_errors_take_anthropics_shape_except_schema_errors() -> None:
    with pytest.raises(ApiError) as info:
        parse_messages(body(messages=USER, max_tokens=1, model="nope"), CFG)
    assert json.loads(info.value.anthropic_body()) == {
        "type": "error",
        "error": {"type": "NotFoundError", "message": info.value.message},
    }
    with pytest.raises(ApiError) as info:
        parse_messages(body(messages=USER), CFG)
    # vLLM checks the schema before its Messages handler runs: OpenAI's shape
    assert json.loads(info.value.anthropic_body())["error"]["type"] == "Bad Request"


def test_both_missing_fields_are_named() -> None:
    with pytest.raises(ApiError) as info:
        parse_messages(json.dumps({}).encode(), CFG)
    assert info.value.message.startswith("3 validation errors:")


@pytest.mark.parametrize(
    ("max_tokens", "out", "reason"), [(7, 7, "length"), (50, 50, "length"), (500, 50, "stop")]
)
def test_output_length(max_tokens: int, out: int, reason: str) -> None:
    p = parse_messages(body(messages=USER, max_tokens=max_tokens), CFG).parsed
    assert (p.max_out, p.finish_reason) == (out, reason)


def test_count_tokens_counts_the_generation_prompt() -> None:
    req = parse_messages(body(messages=USER, max_tokens=3, system="s"), CFG)
    assert req.parsed.prompt_len == count_tokens(render_chat(req.messages))
    counted = json.loads(count_tokens_body(body(messages=USER, system="s"), CFG))
    assert counted == {
        "input_tokens": req.parsed.prompt_len,
        "context_management": {"original_input_tokens": req.parsed.prompt_len},
    }


def test_message_and_stream_events() -> None:
    w = MessageWriter(parse_messages(body(messages=USER, max_tokens=3), CFG), "chatcmpl-1", 0)
    msg = json.loads(w.full(" a b c", 3, 0, "length"))
    assert msg == {
        "id": "chatcmpl-1",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": " a b c"}],
        "model": "base",
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": w.p.prompt_len, "output_tokens": 3},
    }
    assert w.opening() == b"" and w.delta("") == b""
    raw = w.first() + w.delta(" a") + w.closing(" b", 2, 0, "stop")
    got = []
    for chunk in raw.split(b"\n\n")[:-1]:
        name, data = chunk.split(b"\n")
        got.append((name[7:].decode(), json.loads(data[6:])))
    assert [n for n, _ in got] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]  # fmt: skip
    assert all(d["type"] == n for n, d in got)
    assert got[0][1]["message"]["usage"]["output_tokens"] == 0
    assert got[5][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert got[5][1]["usage"]["output_tokens"] == 2
