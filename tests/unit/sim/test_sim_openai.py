"""Request validation and the exact OpenAI response / chunk shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pointsman.sim.config import SimConfig
from pointsman.sim.openai import ApiError, ChunkWriter, Parsed, full_response, parse

CFG = SimConfig(model="base", lora_adapters=["lora-a"], max_model_len=1000, default_max_tokens=50)


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("fields", "max_out", "reason"),
    [
        ({"messages": MSG}, 50, "stop"),
        ({"messages": MSG, "max_tokens": 7}, 7, "length"),
        ({"messages": MSG, "max_completion_tokens": 9, "max_tokens": 7}, 9, "length"),
        ({"messages": MSG, "max_tokens": None}, 50, "stop"),
    ],
)
def test_output_length(fields: dict[str, Any], max_out: int, reason: str) -> None:
    p = parse(body(model="base", **fields), True, CFG)
    assert (p.max_out, p.finish_reason) == (max_out, reason)


def test_default_output_shrinks_near_the_context_limit() -> None:
    p = parse(body(model="base", prompt="x" * 3800), False, CFG)
    assert p.prompt_len == 950 and p.max_out == 50
    p = parse(body(model="base", prompt="x" * 3900), False, CFG)
    assert p.max_out == 1000 - 975


@pytest.mark.parametrize(
    ("raw", "chat", "status"),
    [
        (b"{", True, 400),
        (b'"string"', True, 400),
        (body(model=3, messages=MSG), True, 400),
        (body(model="other", messages=MSG), True, 404),
        (body(model="base", messages=[]), True, 400),
        (body(model="base", messages=["not an object"]), True, 400),
        (body(model="base"), False, 400),
        (body(model="base", prompt=[]), False, 400),
        (body(model="base", prompt="x", max_tokens="5"), False, 400),
        (body(model="base", prompt="x", max_tokens=True), False, 400),
        (body(model="base", prompt="x" * 4000), False, 400),
        (body(model="base", prompt="x", max_tokens=1000), False, 400),
    ],
)
def test_bad_requests(raw: bytes, chat: bool, status: int) -> None:
    with pytest.raises(ApiError) as info:
        parse(raw, chat, CFG)
    assert info.value.status == status
    err = json.loads(info.value.body())["error"]
    assert err["code"] == status and err["message"] and err["type"]


def test_adapter_model_and_token_id_prompt() -> None:
    p = parse(body(model="lora-a", prompt=[1, 2, 3, 4, 5]), False, CFG)
    assert p.model == "lora-a" and p.prompt_len == 5
    assert parse(body(prompt="x"), False, CFG).model == "base"  # vLLM's default model


def test_stream_flags() -> None:
    p = parse(body(messages=MSG, stream=True, stream_options={"include_usage": True}), True, CFG)
    assert p.stream and p.include_usage
    p = parse(body(messages=MSG, stream_options={"include_usage": True}), True, CFG)
    assert not p.stream and not p.include_usage


def parsed(chat: bool, include_usage: bool = True) -> Parsed:
    return Parsed(chat, "base", "text", 12, 3, "length", True, include_usage)


def test_chat_chunks() -> None:
    w = ChunkWriter(parsed(True), "chatcmpl-1", 1700000000)
    events = [w.role(), w.content(' he said "hi"\n'), w.content(" end", "length"), w.usage(3, 4)]
    chunks = []
    for e in events:
        assert e.startswith(b"data: ") and e.endswith(b"\n\n")
        chunks.append(json.loads(e[6:]))
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
    for c in chunks:
        assert {k: c[k] for k in head} == head and c["model"] == "base"
    assert chunks[0]["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert chunks[1]["choices"][0]["delta"] == {"content": ' he said "hi"\n'}
    assert chunks[1]["choices"][0]["finish_reason"] is None
    assert chunks[2]["choices"][0]["finish_reason"] == "length"
    assert chunks[2]["choices"][0]["delta"] == {"content": " end"}
    assert chunks[3]["choices"] == []
    assert chunks[3]["usage"] == {
        "prompt_tokens": 12,
        "total_tokens": 15,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_completion_chunks() -> None:
    w = ChunkWriter(parsed(False), "cmpl-1", 1)
    c = json.loads(w.content(" x")[6:])
    assert c["object"] == "text_completion" and c["choices"][0]["text"] == " x"
    f = json.loads(w.content(" y", "stop")[6:])
    assert f["choices"][0]["finish_reason"] == "stop" and f["choices"][0]["text"] == " y"


@pytest.mark.parametrize("chat", [True, False])
def test_full_response(chat: bool) -> None:
    out = json.loads(full_response(parsed(chat), "id-1", 5, " a b", 2, -1, "length"))
    assert out["object"] == ("chat.completion" if chat else "text_completion")
    assert out["usage"]["completion_tokens"] == 2
    assert out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    text = choice["message"]["content"] if chat else choice["text"]
    assert text == " a b"
