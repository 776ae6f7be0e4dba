"""/tokenize, /detokenize and the render paths: vLLM's shapes over the simulator's token ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pointsman.sim.config import SimConfig
from pointsman.sim.openai import ApiError, parse
from pointsman.sim.render import (
    detokenize_body,
    render_chat_body,
    render_completions_body,
    render_parsed_body,
    tokenize_body,
)
from pointsman.sim.responses import parse_responses
from pointsman.sim.tokens import Detokenizer, render_chat, token_ids

CFG = SimConfig(model="base", max_model_len=1000, default_max_tokens=50)
MSGS = [{"role": "user", "content": "hello there"}]


def body(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def call(fn: Any, *args: Any) -> Any:
    return json.loads(fn(*args))


def test_tokenize_prompt_and_messages() -> None:
    d = Detokenizer()
    out = call(tokenize_body, body(prompt="abcdefgh"), CFG, d)
    assert out == {
        "count": 2,
        "max_model_len": 1000,
        "tokens": token_ids("abcdefgh"),
        "token_strs": None,
    }
    out = call(tokenize_body, body(model="base", prompt="abcdef", return_token_strs=True), CFG, d)
    assert out["token_strs"] == ["abcd", "ef"]
    chat = call(tokenize_body, body(messages=MSGS), CFG, d)
    assert chat["tokens"] == token_ids(render_chat(MSGS))
    # the count is the prompt_tokens a chat request with these messages reports
    assert chat["count"] == parse(body(messages=MSGS), True, CFG).prompt_len
    bare = call(tokenize_body, body(messages=MSGS, add_generation_prompt=False), CFG, d)
    assert bare["tokens"] == token_ids(render_chat(MSGS, add_generation_prompt=False))
    assert call(detokenize_body, body(tokens=chat["tokens"]), CFG, d) == {
        "prompt": render_chat(MSGS)
    }


@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        (body(model="base"), 400, "body.prompt"),
        (body(prompt=3), 400, "body.prompt"),
        (body(messages=["x"]), 400, "body.messages"),
        (body(prompt="x", model="nope"), 404, "model"),
        (b'{"prompt": ', 400, None),
        (b"[1]", 400, "body"),
    ],
)
def test_tokenize_errors(raw: bytes, status: int, param: str | None) -> None:
    with pytest.raises(ApiError) as info:
        tokenize_body(raw, CFG, Detokenizer())
    assert info.value.status == status
    if param is not None:
        assert info.value.param == param
    else:
        assert str(info.value.param).startswith("body.")


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (body(), "body.tokens"),
        (body(tokens="1"), "body.tokens"),
        (body(tokens=[1, "a"]), "body.tokens.1"),
    ],
)
def test_detokenize_errors(raw: bytes, param: str) -> None:
    with pytest.raises(ApiError) as info:
        detokenize_body(raw, CFG, Detokenizer())
    assert (info.value.status, info.value.param) == (400, param)


def test_render_chat_is_the_engine_request() -> None:
    out = call(render_chat_body, body(model="base", messages=MSGS, max_tokens=3), CFG, "chatcmpl-1")
    assert out["request_id"] == "chatcmpl-1" and out["model"] == "base"
    assert out["token_ids"] == token_ids(render_chat(MSGS))
    sp = out["sampling_params"]
    assert (sp["max_tokens"], sp["temperature"], sp["output_kind"]) == (3, 1.0, 2)
    assert "extra_args" not in sp
    open_ended = call(render_chat_body, body(messages=MSGS, stream=True, temperature=0), CFG, "c")
    assert open_ended["sampling_params"]["max_tokens"] == 1000 - len(out["token_ids"])
    assert open_ended["sampling_params"]["temperature"] == 0.0
    assert open_ended["stream"] is True and open_ended["sampling_params"]["output_kind"] == 1
    with pytest.raises(ApiError) as info:
        render_chat_body(body(messages=[]), CFG, "c")
    assert info.value.status == 400


def test_render_completions_is_one_request_per_prompt() -> None:
    one = call(render_completions_body, body(prompt="abcd", max_tokens=2), CFG, "cmpl-1")
    assert len(one) == 1 and one[0]["token_ids"] == token_ids("abcd")
    assert one[0]["request_id"] == "cmpl-1"
    many = call(render_completions_body, body(prompt=["abcd", [5, 6, 7]]), CFG, "cmpl-2")
    assert [m["token_ids"] for m in many] == [token_ids("abcd"), [5, 6, 7]]
    assert [m["request_id"] for m in many] == ["cmpl-2-0", "cmpl-2-1"]
    assert many[1]["sampling_params"]["max_tokens"] == 1000 - 3


def test_render_of_a_responses_request() -> None:
    raw = body(model="base", input="hello there")
    req = parse_responses(raw, CFG, None)
    out = call(render_parsed_body, raw, req.parsed, "max_output_tokens", "resp_1", CFG, True)
    assert out["token_ids"] == token_ids(req.parsed.text)
    assert out["sampling_params"]["extra_args"] == {}
    assert out["sampling_params"]["max_tokens"] == 1000 - req.parsed.prompt_len
