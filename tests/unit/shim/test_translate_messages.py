"""The Anthropic Messages dialect: checks, the translation to chat completions and back, and
reading a native pool's answers, against real vLLM captures and Anthropic's documented events.

The translated streams are also fed to the official ``anthropic`` client's own accumulator,
so what a client makes of them is checked, not only their bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event

from pointsman.v1.classify import CachedAnswer
from pointsman_shim.core.dialects import anthropic, anthropic_answer
from pointsman_shim.core.dialects.base import BodyChanges, LLMRequest, Translating, UpstreamAnswer
from pointsman_shim.core.errors import RequestError
from tests.compat.fixtures import raw, sse_json
from tests.unit.shim.test_sse_chat_answer import GOLDEN, events_of

MESSAGES = anthropic.MESSAGES


def parse(**fields: Any) -> LLMRequest:
    body = {"model": "m", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    body.update(fields)
    return MESSAGES.parse(json.dumps(body).encode(), max_bytes=1 << 20)


def translate(translator: Translating | None, body: bytes, pieces: int = 7) -> bytes:
    assert translator is not None
    size = max(1, len(body) // pieces)
    out = b"".join(translator.feed(body[i : i + size]) for i in range(0, len(body), size))
    return out + translator.finish()


def kinds(stream: bytes, skip: tuple[str, ...] = ("ping",)) -> list[str]:
    """Event names in order, runs of the same name collapsed (engines chunk text differently)."""
    out: list[str] = []
    for name, _ in events_of(stream, []):
        if name not in skip and (not out or out[-1] != name):
            out.append(name)
    return out


def accumulated(stream: bytes) -> Any:
    """What the official anthropic client makes of a stream of events."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for _, payload in events_of(stream, []):
        event = json.loads(payload)
        if event["type"] == "ping":
            continue
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    return snapshot


# -- checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"max_tokens": None}, "missing_max_tokens"),
        ({"max_tokens": 0}, "invalid_max_tokens"),
        ({"messages": []}, "empty_messages"),
        ({"messages": "hi"}, "invalid_messages"),
        ({"messages": [{"role": "system", "content": "x"}]}, "invalid_messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "invalid_messages"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "invalid_content_block"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "invalid_content_block"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                    }
                ]
            },
            "invalid_content_block",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "invalid_content_block",
        ),
        ({"system": 5}, "invalid_system"),
        ({"system": [{"type": "image"}]}, "invalid_system"),
        ({"tools": [{"name": "f"}]}, "invalid_tools"),
        ({"tool_choice": {"type": "maybe"}}, "invalid_tool_choice"),
        ({"tools": [], "tool_choice": {"type": "tool", "name": "f"}}, "invalid_tool_choice"),
        ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "invalid_thinking"),
        (
            {"max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 4000}},
            "invalid_thinking",
        ),
        ({"stop_sequences": "x"}, "invalid_stop_sequences"),
        ({"stream": "yes"}, "invalid_stream"),
        ({"model": ""}, "invalid_model"),
    ],
)
def test_bad_input_is_a_400_with_its_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse(**fields)
    assert caught.value.status == 400 and caught.value.reason == reason


TEXT, IMAGE = {"type": "text", "text": "a"}, {"type": "image", "source": {}}


@pytest.mark.parametrize(
    ("content", "system", "tool_result"),
    [
        (None, "", ""),
        ("plain", "plain", "plain"),
        ([TEXT, {"type": "text", "text": "b"}], "a\nb", "a\nb"),
        ([TEXT, IMAGE], None, "a"),  # a system prompt is text only; a tool's images are skipped
        ([IMAGE], None, ""),
        ([{"type": "text", "text": 1}], None, None),
        ([{"text": "a"}], None, None),
        (["a"], None, None),
        ({"type": "text"}, None, None),
    ],
)
def test_the_text_of_system_and_tool_result_content(
    content: Any, system: str | None, tool_result: str | None
) -> None:
    assert anthropic.blocks_text(content, only_text=True) == system
    assert anthropic.blocks_text(content, only_text=False) == tool_result


def test_errors_speak_anthropic() -> None:
    body = json.loads(
        MESSAGES.error_body("nope", type="invalid_request_error", code="x", status=404)
    )
    assert body == {"type": "error", "error": {"type": "not_found_error", "message": "nope"}}
    for status, kind in [
        (400, "invalid_request_error"),
        (403, "permission_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (503, "overloaded_error"),
        (501, "api_error"),
        (418, "invalid_request_error"),
    ]:
        assert (
            json.loads(MESSAGES.error_body("m", type="t", code="c", status=status))["error"]["type"]
            == kind
        )


def test_the_normalised_request() -> None:
    request = parse(
        system=[{"type": "text", "text": "be brief"}],
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "sunny"}],
                    }
                ],
            },
        ],
        stop_sequences=["END"],
        temperature=0.2,
    )
    assert [(t.role, t.content) for t in request.turns] == [
        ("system", "be brief"),
        ("user", "weather?"),
        ("assistant", ""),
        ("user", "sunny"),
    ]
    assert request.params == {"temperature": 0.2, "max_tokens": 64, "stop": ["END"]}


# -- the request, translated -------------------------------------------------------------------


def test_translation_to_chat_completions() -> None:
    request = parse(
        system="be brief",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a cat"},
                    {"type": "text", "text": "and?"},
                ],
            },
        ],
        tools=[{"name": "lookup", "description": "find", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.5,
        top_k=5,
        thinking={"type": "disabled"},
        stream=True,
    )
    changes = BodyChanges(
        "m2", {"chat_template_kwargs": {"enable_thinking": True}}, upstream="chat"
    )
    upstream = MESSAGES.rewrite(request, changes)
    assert upstream.path == "/v1/chat/completions" and upstream.speaks == "openai-chat"
    assert upstream.body is not None
    assert json.loads(upstream.body) == {
        "model": "m2",
        "messages": [
            {"role": "system", "content": "be brief"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "a cat"},
            {"role": "user", "content": "and?"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "parameters": {"type": "object"},
                    "description": "find",
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        # the client's switch, then the classifier's on top of it
        "chat_template_kwargs": {"enable_thinking": True, "thinking": False},
        "max_tokens": 64,
        "temperature": 0.5,
        "top_k": 5,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_a_system_prompt_goes_after_the_clients_own() -> None:
    request = parse(system="client rules")
    inserted = MESSAGES.rewrite(request, BodyChanges("m", system_prompt="ours", upstream="chat"))
    assert inserted.body is not None
    assert [m["content"] for m in json.loads(inserted.body)["messages"][:2]] == [
        "client rules",
        "ours",
    ]
    native = MESSAGES.rewrite(request, BodyChanges("m", system_prompt="ours"))
    assert native.body is not None and native.path is None
    assert json.loads(native.body)["system"] == [
        {"type": "text", "text": "client rules"},
        {"type": "text", "text": "ours"},
    ]
    replaced = MESSAGES.rewrite(
        request, BodyChanges("m", system_prompt="ours", system_prompt_mode="replace")
    )
    assert replaced.body is not None and json.loads(replaced.body)["system"] == "ours"


@pytest.mark.parametrize(
    ("max_tokens", "thinking", "on", "expected"),
    [
        (4096, None, True, {"type": "enabled", "budget_tokens": 2048}),
        (1500, None, True, {"type": "enabled", "budget_tokens": 1024}),
        (1000, None, True, None),  # no budget Anthropic accepts fits under max_tokens
        (
            4096,
            {"type": "enabled", "budget_tokens": 3000},
            True,
            {"type": "enabled", "budget_tokens": 3000},
        ),
        (4096, {"type": "enabled", "budget_tokens": 3000}, False, {"type": "disabled"}),
    ],
)
def test_the_reasoning_switch_maps_to_thinking_for_a_native_pool(
    max_tokens: int, thinking: dict[str, Any] | None, on: bool, expected: dict[str, Any] | None
) -> None:
    fields: dict[str, Any] = {"max_tokens": max_tokens}
    if thinking is not None:
        fields["thinking"] = thinking
    request = parse(**fields)
    upstream = MESSAGES.rewrite(request, BodyChanges("m", reasoning=on))
    body = json.loads(upstream.body) if upstream.body is not None else request.body
    assert body.get("thinking") == expected


def test_an_unchanged_native_request_passes_untouched() -> None:
    assert MESSAGES.rewrite(parse(), BodyChanges("m")).body is None


def test_server_tools_cannot_be_translated() -> None:
    request = parse(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert MESSAGES.rewrite(request, BodyChanges("m")).body is None  # native: the engine's call
    with pytest.raises(RequestError) as caught:
        MESSAGES.rewrite(request, BodyChanges("m", upstream="chat"))
    assert caught.value.reason == "unsupported_tool"


# -- the answer, translated back ----------------------------------------------------------------


def translator(stream: bool, status: int = 200, **fields: Any) -> Translating | None:
    return MESSAGES.response_translator(
        parse(stream=stream, **fields),
        UpstreamAnswer(status, stream, True, "n1", 1),
    )


def test_a_real_chat_answer_becomes_a_message_like_vllms_own() -> None:
    message = json.loads(translate(translator(False), raw("chat.json")))
    chat = json.loads(raw("chat.json"))
    vllm = json.loads(raw("messages.json"))
    assert set(vllm) <= set(message)
    assert message["id"] == "msg_n1" and message["type"] == "message"
    assert message["content"] == [
        {"type": "text", "text": chat["choices"][0]["message"]["content"]}
    ]
    assert message["stop_reason"] == "max_tokens"
    assert message["usage"] == {
        "input_tokens": chat["usage"]["prompt_tokens"],
        "output_tokens": chat["usage"]["completion_tokens"],
    }


def test_tool_calls_and_reasoning_become_blocks() -> None:
    chat = {
        "id": "c",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": "Checking.",
                    "reasoning_content": "think",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    message = json.loads(translate(translator(False), json.dumps(chat).encode()))
    golden = json.loads((GOLDEN / "anthropic" / "message_tool_use.json").read_bytes())
    assert message["content"] == [
        {"type": "thinking", "thinking": "think", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "w", "input": {"city": "Paris"}},
    ]
    assert (
        message["stop_reason"] == golden["stop_reason"] == "tool_use"
    )  # vLLM ends a named call with stop


def test_a_stop_sequence_is_named() -> None:
    chat = {
        "choices": [
            {"index": 0, "finish_reason": "stop", "stop_reason": "END", "message": {"content": "a"}}
        ]
    }
    message = json.loads(
        translate(translator(False, stop_sequences=["END"]), json.dumps(chat).encode())
    )
    assert (message["stop_reason"], message["stop_sequence"]) == ("stop_sequence", "END")


def test_a_broken_json_answer_is_a_502_error() -> None:
    t = translator(False)
    out = json.loads(translate(t, b'{"choices": []}'))
    assert t is not None and t.failed and t.status == 502
    assert out["type"] == "error" and out["error"]["type"] == "api_error"


def test_a_real_chat_stream_becomes_the_events_vllm_sends() -> None:
    out = translate(translator(True), raw("chat_stream.sse"))
    assert (
        kinds(out)
        == kinds(raw("messages_stream.sse"))
        == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    )
    chat = sse_json(raw("chat_stream.sse"))
    message = accumulated(out)
    assert message.content[0].text == "".join(
        c["choices"][0]["delta"].get("content", "") for c in chat if c["choices"]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.input_tokens == chat[-1]["usage"]["prompt_tokens"]
    assert message.usage.output_tokens == chat[-1]["usage"]["completion_tokens"]


def test_a_tool_call_stream_becomes_tool_use_blocks_like_anthropics() -> None:
    out = translate(
        translator(True), (GOLDEN / "openai" / "chat_tool_calls_stream.sse").read_bytes(), pieces=13
    )
    golden = (GOLDEN / "anthropic" / "tool_use_stream.sse").read_bytes()
    # Anthropic's stream has one call, ours two: the same shape, one more tool block
    assert kinds(out)[:7] == kinds(golden)[:7]
    message = accumulated(out)
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[1].input == {"location": "Paris"}
    assert (message.content[1].id, message.content[2].name) == (
        "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "get_time",
    )
    assert message.stop_reason == accumulated(golden).stop_reason == "tool_use"


def test_a_reasoning_stream_becomes_a_thinking_block() -> None:
    out = translate(
        translator(True), (GOLDEN / "openai" / "chat_reasoning_stream.sse").read_bytes()
    )
    golden = (GOLDEN / "anthropic" / "thinking_stream.sse").read_bytes()
    assert kinds(out) == kinds(golden)
    message = accumulated(out)
    assert [
        (b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content
    ] == [("thinking", "2+2 is 4."), ("text", "4")]


@pytest.mark.parametrize(
    "upstream",
    [
        raw("chat_stream.sse")[:600],  # cut short
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: {"error": {"message": "engine died"}}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: {oops\n\n',
    ],
)
def test_a_stream_that_breaks_ends_with_an_error_event(upstream: bytes) -> None:
    t = translator(True)
    out = translate(t, upstream + b"data: ignored after the failure\n\n")
    events = events_of(out, [])
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error" and json.loads(events[-1][1])["error"]["type"] == "api_error"
    assert t is not None and t.failed
    names = [n for n, _ in events]
    assert names.count("content_block_start") == names.count("content_block_stop")  # closed first


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        (raw("unknown_model.json"), 404, "not_found_error", "does not exist"),
        (raw("messages_unknown_model.json"), 404, "not_found_error", "does not exist"),
        (raw("messages_missing_max_tokens.json"), 400, "invalid_request_error", "validation error"),
        (b'{"detail": "Method Not Allowed"}', 405, "invalid_request_error", "Method Not Allowed"),
        (b"no healthy upstream", 503, "overloaded_error", "no healthy upstream"),
        (b"", 500, "api_error", "status 500"),
    ],
)
def test_engine_and_gateway_errors_become_anthropic_errors(
    body: bytes, status: int, kind: str, message: str
) -> None:
    t = MESSAGES.response_translator(parse(), UpstreamAnswer(status, False, False, "n", 1))
    out = json.loads(translate(t, body))
    assert (
        out["type"] == "error"
        and out["error"]["type"] == kind
        and message in out["error"]["message"]
    )


def test_a_native_success_passes_untouched() -> None:
    assert MESSAGES.response_translator(parse(), UpstreamAnswer(200, True, False, "n", 1)) is None


def test_count_tokens_by_a_one_token_chat_completion() -> None:
    """Real vLLM counts the same: its chat answer's prompt_tokens for the captured chat request
    equals its own count_tokens for the same Messages body."""
    spec = json.loads(raw("requests.json"))
    request = anthropic.COUNT_TOKENS.parse(
        json.dumps(spec["messages_count_tokens"]["body"]).encode(), max_bytes=1 << 20
    )
    upstream = anthropic.COUNT_TOKENS.rewrite(request, BodyChanges("tiny-llama", upstream="chat"))
    assert upstream.path == "/v1/chat/completions" and upstream.body is not None
    chat = spec["chat"]["body"]
    assert json.loads(upstream.body) == {
        "model": "tiny-llama",
        "messages": chat["messages"],
        "max_tokens": 1,
    }
    t = anthropic.COUNT_TOKENS.response_translator(
        request, UpstreamAnswer(200, False, True, "n", 1)
    )
    counted = json.loads(translate(t, raw("chat.json")))
    assert counted == {
        "input_tokens": json.loads(raw("messages_count_tokens.json"))["input_tokens"]
    }
    broken = anthropic.COUNT_TOKENS.response_translator(
        request, UpstreamAnswer(200, False, True, "n", 1)
    )
    assert json.loads(translate(broken, b'{"choices": [{"message": {}}]}'))["type"] == "error"
    assert broken is not None and broken.status == 502


# -- a native pool's answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sse", "text", "finish", "usage"),
    [
        (
            "vllm:messages.json",
            False,
            " good down in in in in in in in in in in",
            "length",
            (20, 12),
        ),
        (
            "vllm:messages_stream.sse",
            True,
            " old batch eight question request cache down in",
            "length",
            (13, 8),
        ),
        ("anthropic:message.json", False, "Hi! My name is Claude.", "stop", (2095, 503)),
        ("anthropic:text_stream.sse", True, "Hello!", "stop", (25, 15)),
        ("anthropic:tool_use_stream.sse", True, None, None, (472, 89)),
        ("anthropic:thinking_stream.sse", True, None, None, (38, 114)),
        ("anthropic:error_stream.sse", True, None, None, (12, 1)),
        ("anthropic:message_tool_use.json", False, None, None, (384, 85)),
    ],
)
def test_reading_native_answers(
    name: str, sse: bool, text: str | None, finish: str | None, usage: tuple[int, int]
) -> None:
    source, _, file = name.partition(":")
    body = raw(file) if source == "vllm" else (GOLDEN / "anthropic" / file).read_bytes()
    usage_reader = MESSAGES.usage_reader(sse=sse)
    answer_reader = MESSAGES.answer_reader(sse=sse)
    for i in range(0, len(body), 97):
        usage_reader.feed(body[i : i + 97])
        answer_reader.feed(body[i : i + 97])
    read = usage_reader.finish()
    assert read is not None and (read.prompt_tokens, read.completion_tokens) == usage
    filled = answer_reader.finish()
    assert (filled.content if filled else None) == text
    assert (filled.finish_reason if filled else None) == finish


@pytest.mark.parametrize("stream", [False, True])
def test_a_cache_hit_reads_back_as_the_answer(stream: bool) -> None:
    answer = CachedAnswer(
        content="Paris.", finish_reason="length", prompt_tokens=7, completion_tokens=2
    )
    rendered = MESSAGES.render_cached(parse(stream=stream), answer, model="m", nonce="x", created=1)
    reader = MESSAGES.answer_reader(sse=stream)
    reader.feed(rendered.body)
    filled = reader.finish()
    assert filled is not None
    assert (
        filled.content,
        filled.finish_reason,
        filled.prompt_tokens,
        filled.completion_tokens,
    ) == ("Paris.", "length", 7, 2)
    if stream:
        assert accumulated(rendered.body).content[0].text == "Paris."
    else:
        assert anthropic_answer.STOP_REASONS["length"] == json.loads(rendered.body)["stop_reason"]
