"""Body rewriting, usage reading and header policy."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pointsman_shim.core import headers
from pointsman_shim.core.dialects import openai_chat, openai_completions
from pointsman_shim.core.dialects.base import BodyChanges, LLMRequest
from pointsman_shim.core.dialects.openai import deep_merge
from pointsman_shim.core.dialects.openai_usage import UsageReader

CHAT = openai_chat.DIALECT


def request(body: dict[str, object]) -> LLMRequest:
    return CHAT.parse(json.dumps(body).encode(), max_bytes=1 << 20)


def rewrite(req: LLMRequest, **changes: Any) -> dict[str, Any] | None:
    """The rewritten body, decoded (``None``: the client's bytes pass untouched)."""
    upstream = CHAT.rewrite(req, BodyChanges(**changes))
    assert upstream.path is None  # chat completions go upstream as chat completions
    return None if upstream.body is None else json.loads(upstream.body)


BASE = {"model": "auto", "messages": [{"role": "user", "content": "2+2?"}]}


def test_nothing_to_change_keeps_original_bytes() -> None:
    assert rewrite(request({**BASE, "model": "m"}), model="m") is None


def test_model_rewrite_leaves_input_untouched() -> None:
    req = request(BASE)
    new = rewrite(req, model="math")
    assert new is not None and new["model"] == "math"
    assert req.body["model"] == "auto"


def test_body_set_deep_merges_without_touching_input() -> None:
    req = request({**BASE, "chat_template_kwargs": {"foo": 1}})
    new = rewrite(req, model="m", body_set={"chat_template_kwargs": {"enable_thinking": True}})
    assert new is not None
    assert new["chat_template_kwargs"] == {"foo": 1, "enable_thinking": True}
    assert req.body["chat_template_kwargs"] == {"foo": 1}


@pytest.mark.parametrize(
    ("mode", "messages", "roles"),
    [
        ("insert", [{"role": "user", "content": "q"}], ["system", "user"]),
        (
            "insert",
            [{"role": "system", "content": "c"}, {"role": "user", "content": "q"}],
            ["system", "system", "user"],
        ),
        (
            "replace",
            [{"role": "system", "content": "c"}, {"role": "user", "content": "q"}],
            ["system", "user"],
        ),
    ],
)
def test_system_prompt(mode: str, messages: list[dict[str, str]], roles: list[str]) -> None:
    new = rewrite(
        request({"model": "m", "messages": messages}),
        model="m",
        system_prompt="S",
        system_prompt_mode=mode,
    )
    assert new is not None
    assert [m["role"] for m in new["messages"]] == roles
    assert any(m["content"] == "S" for m in new["messages"])
    if mode == "replace":
        assert all(m["content"] != "c" for m in new["messages"])


def test_completions_take_no_system_prompt() -> None:
    dialect = openai_completions.DIALECT
    req = dialect.parse(b'{"model": "m", "prompt": "p"}', max_bytes=1 << 20)
    assert dialect.rewrite(req, BodyChanges("m", system_prompt="S")).body is None
    new = dialect.rewrite(req, BodyChanges("n", {"top_k": 5}, system_prompt="S")).body
    assert new is not None and json.loads(new) == {"model": "n", "prompt": "p", "top_k": 5}


def test_deep_merge() -> None:
    target = {"a": {"b": 1, "c": 2}, "d": 1}
    deep_merge(target, {"a": {"b": 5}, "d": {"x": 1}})
    assert target == {"a": {"b": 5, "c": 2}, "d": {"x": 1}}


def test_usage_from_json_in_chunks() -> None:
    body = json.dumps(
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
    ).encode()
    reader = UsageReader(sse=False)
    for i in range(0, len(body), 5):
        reader.feed(body[i : i + 5])
    usage = reader.finish()
    assert usage is not None and (
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
    ) == (3, 4, 7)


def test_usage_from_sse_split_anywhere() -> None:
    chunks = [
        b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n',
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(chunks)
    for cut in range(1, len(stream)):
        reader = UsageReader(sse=True)
        reader.feed(stream[:cut])
        reader.feed(stream[cut:])
        usage = reader.finish()
        assert usage is not None and usage.total_tokens == 7
        assert reader.chunks == 2


@pytest.mark.parametrize("body", [b"", b"not json", b'{"usage": "x"}', b"[]"])
def test_no_usage(body: bytes) -> None:
    reader = UsageReader(sse=False)
    reader.feed(body)
    usage = reader.finish()
    assert usage is None or usage.total_tokens is None


def test_client_routing_headers_are_stripped() -> None:
    names = [
        ":path",
        "x-gateway-destination-endpoint",
        "x-selected-model",
        "x-pointsman-route",
        "x-pointsman-priority",
        "x-pointsman-debug",
        "x-prefiller-host-port",
        "authorization",
        "x-gateway-destination-endpoint-served",
        "x-gateway-destination-endpoint-subset",
    ]
    assert sorted(headers.to_strip(names)) == sorted(
        [
            "x-gateway-destination-endpoint",
            "x-selected-model",
            "x-pointsman-route",
            "x-prefiller-host-port",
            "x-gateway-destination-endpoint-served",
            "x-gateway-destination-endpoint-subset",
        ]
    )


def test_forwarded_headers_never_include_credentials() -> None:
    out = headers.forwarded({"authorization": "Bearer x", "x-session-id": "s", "cookie": "c"})
    assert out == {"x-session-id": "s"}
