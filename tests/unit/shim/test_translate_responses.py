"""The Responses dialect: checks, stateless requests, the translation to chat completions and
back, and reading a native pool's answers, against real vLLM 0.32 captures.

Translated streams are also fed to the official ``openai`` client's own stream accumulator, so
what a client makes of them is checked, not only their bytes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import omit
from openai._models import construct_type_unchecked
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ResponseStreamEvent

from pointsman.v1.classify import CachedAnswer
from pointsman_shim.core.dialects import openai_responses, responses_answer
from pointsman_shim.core.dialects.base import BodyChanges, LLMRequest, Translating, UpstreamAnswer
from pointsman_shim.core.errors import RequestError
from tests.compat.fixtures import raw, sse_json
from tests.unit.shim.test_sse_chat_answer import GOLDEN, events_of
from tests.unit.shim.test_translate_messages import kinds, translate

RESPONSES = openai_responses.DIALECT


def parse(**fields: Any) -> LLMRequest:
    body = {"model": "m", "input": "hi", **fields}
    return RESPONSES.parse(json.dumps(body).encode(), max_bytes=1 << 20)


def final(stream: bytes) -> Any:
    """What the official openai client makes of a stream: its ``get_final_response()``."""
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=[], text_format=omit)
    for _, payload in events_of(stream, []):
        event = construct_type_unchecked(type_=ResponseStreamEvent, value=json.loads(payload))  # type: ignore[arg-type]
        state.handle_event(event)
    return state._completed_response


# -- checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"input": None}, "missing_input"),
        ({"input": 5}, "invalid_input"),
        ({"input": []}, "empty_input"),
        ({"input": [5]}, "invalid_input_item"),
        ({"input": [{"type": "web_search_call"}]}, "invalid_input_item"),
        ({"input": [{"role": "robot", "content": "x"}]}, "invalid_input_item"),
        ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "invalid_input_item"),
        ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "invalid_input_item"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "invalid_input_item"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "invalid_input_item"),
        ({"instructions": 5}, "invalid_instructions"),
        ({"previous_response_id": ""}, "invalid_previous_response_id"),
        ({"store": "yes"}, "invalid_store"),
        ({"background": True}, "background_unsupported"),
        ({"max_output_tokens": 0}, "invalid_max_output_tokens"),
        ({"tools": [{"type": "function"}]}, "invalid_tools"),
        ({"tools": "all"}, "invalid_tools"),
        ({"stream": 1}, "invalid_stream"),
    ],
)
def test_bad_input_is_a_400_with_its_reason(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse(**fields)
    assert caught.value.status == 400 and caught.value.reason == reason


def test_the_normalised_request() -> None:
    request = parse(
        instructions="be brief",
        input=[
            {"role": "developer", "content": "no tables"},
            {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "w", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ],
        max_output_tokens=9,
        previous_response_id="resp_1",
        temperature=0,
    )
    assert [(t.role, t.content) for t in request.turns] == [
        ("system", "be brief"),
        ("system", "no tables"),
        ("user", "weather?"),
        ("tool", "sunny"),
    ]
    assert request.params == {"temperature": 0, "max_tokens": 9}
    assert request.previous_response_id == "resp_1" and request.store
    assert not parse(store=False).store


def test_a_native_pool_gets_a_stateless_request() -> None:
    request = parse(previous_response_id="resp_1", store=True, instructions="rules")
    resumed = openai_responses.resume(
        request,
        [
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "earlier"}],
            }
        ],
    )
    upstream = RESPONSES.rewrite(resumed, BodyChanges("m2", {"reasoning_effort": "high"}))
    assert upstream.path is None and upstream.body is not None
    body = json.loads(upstream.body)
    assert body["store"] is False and "previous_response_id" not in body
    assert body["model"] == "m2" and body["reasoning"] == {"effort": "high"}
    assert body["input"] == [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "earlier"}],
        },
        {"type": "message", "role": "user", "content": "hi"},
    ]
    assert [t.role for t in resumed.turns] == ["system", "assistant", "user"]
    assert resumed.previous_response_id == "resp_1"  # the answer repeats it


def test_a_system_prompt_for_a_native_pool() -> None:
    request = parse(
        instructions="client",
        input=[{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
    )
    inserted = RESPONSES.rewrite(request, BodyChanges("m", system_prompt="ours"))
    assert inserted.body is not None
    body = json.loads(inserted.body)
    assert body["instructions"] == "client"
    assert [(i["role"], i["content"]) for i in body["input"]] == [
        ("system", "s"),
        ("system", "ours"),
        ("user", "q"),
    ]
    replaced = RESPONSES.rewrite(
        request, BodyChanges("m", system_prompt="ours", system_prompt_mode="replace")
    )
    assert replaced.body is not None
    body = json.loads(replaced.body)
    assert "instructions" not in body
    assert [(i["role"], i["content"]) for i in body["input"]] == [("system", "ours"), ("user", "q")]


def test_translation_to_chat_completions() -> None:
    request = parse(
        instructions="be brief",
        input=[
            {"role": "developer", "content": "no tables"},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Let me look."}],
            },
            {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": '{"q": "x"}'},
            {"type": "function_call", "call_id": "c2", "name": "lookup", "arguments": '{"q": "y"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "a cat"},
            {
                "type": "function_call_output",
                "call_id": "c2",
                "output": [{"type": "input_text", "text": "a dog"}],
            },
        ],
        tools=[
            {
                "type": "function",
                "name": "lookup",
                "description": "find",
                "parameters": {"type": "object"},
                "strict": True,
            }
        ],
        tool_choice={"type": "function", "name": "lookup"},
        text={
            "format": {
                "type": "json_schema",
                "name": "out",
                "schema": {"type": "object"},
                "strict": True,
            }
        },
        reasoning={"effort": "low"},
        max_output_tokens=32,
        temperature=0.5,
        parallel_tool_calls=False,
        stream=True,
        store=True,
        metadata={"k": "v"},
    )
    upstream = RESPONSES.rewrite(
        request,
        BodyChanges("m2", {"chat_template_kwargs": {"enable_thinking": False}}, upstream="chat"),
    )
    assert upstream.path == "/v1/chat/completions" and upstream.speaks == "openai-chat"
    assert upstream.body is not None
    assert json.loads(upstream.body) == {
        "model": "m2",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "system", "content": "no tables"},
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
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "y"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "a cat"},
            {"role": "tool", "tool_call_id": "c2", "content": "a dog"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "find",
                    "parameters": {"type": "object"},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "max_tokens": 32,
        "temperature": 0.5,
        "parallel_tool_calls": False,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
        },
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
        "chat_template_kwargs": {"enable_thinking": False},
    }


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"tools": [{"type": "web_search"}]}, "unsupported_tool"),
        ({"tool_choice": {"type": "file_search"}}, "unsupported_tool_choice"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "unsupported_input_part",
        ),
    ],
)
def test_what_chat_completions_cannot_say_is_a_400(fields: dict[str, Any], reason: str) -> None:
    request = parse(**fields)
    RESPONSES.rewrite(request, BodyChanges("m"))  # a native pool takes it
    with pytest.raises(RequestError) as caught:
        RESPONSES.rewrite(request, BodyChanges("m", upstream="chat"))
    assert caught.value.status == 400 and caught.value.reason == reason


# -- the answer, translated back ----------------------------------------------------------------


def translator(stream: bool, **fields: Any) -> Translating | None:
    return RESPONSES.response_translator(
        parse(stream=stream, **fields),
        UpstreamAnswer(200, stream, True, "n1", 7),
    )


def test_a_real_chat_answer_becomes_a_response_like_vllms_own() -> None:
    t = translator(False, max_output_tokens=12, previous_response_id="resp_0", metadata={"k": "v"})
    response = json.loads(translate(t, raw("chat.json")))
    chat = json.loads(raw("chat.json"))
    vllm = json.loads(raw("responses.json"))
    openai_fields = {
        "id",
        "object",
        "created_at",
        "status",
        "incomplete_details",
        "instructions",
        "metadata",
        "model",
        "output",
        "parallel_tool_calls",
        "previous_response_id",
        "temperature",
        "tool_choice",
        "tools",
        "top_p",
        "truncation",
        "usage",
        "user",
        "max_output_tokens",
        "reasoning",
        "text",
    }
    assert openai_fields <= set(vllm) | {"previous_response_id"}
    assert openai_fields <= set(response)
    assert (response["id"], response["created_at"], response["status"]) == (
        "resp_n1",
        7,
        "incomplete",
    )
    assert (
        response["incomplete_details"]
        == vllm["incomplete_details"]
        == {"reason": "max_output_tokens"}
    )
    assert response["previous_response_id"] == "resp_0" and response["metadata"] == {"k": "v"}
    [item] = response["output"]
    assert (
        item["type"] == "message"
        and item["content"][0]["text"] == chat["choices"][0]["message"]["content"]
    )
    assert response["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]
    assert response["usage"]["total_tokens"] == chat["usage"]["total_tokens"]
    assert t is not None and t.result == response  # what the store keeps


def test_tool_calls_and_reasoning_become_items() -> None:
    chat = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "content": None,
                    "reasoning": "think",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "w", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    response = json.loads(translate(translator(False), json.dumps(chat).encode()))
    assert [i["type"] for i in response["output"]] == ["reasoning", "function_call"]
    call = response["output"][1]
    assert (call["call_id"], call["name"], call["arguments"], call["status"]) == (
        "call_1",
        "w",
        '{"city":"Paris"}',
        "completed",
    )
    assert response["status"] == "completed"


def test_a_real_chat_stream_becomes_the_events_vllm_sends() -> None:
    t = translator(True, max_output_tokens=8)
    out = translate(t, raw("chat_stream.sse"))
    assert kinds(out) == kinds(raw("responses_stream.sse"))
    numbers = [json.loads(p)["sequence_number"] for _, p in events_of(out, [])]
    assert numbers == list(range(len(numbers)))
    chat = sse_json(raw("chat_stream.sse"))
    response = final(out)
    assert response.output_text == "".join(
        c["choices"][0]["delta"].get("content", "") for c in chat if c["choices"]
    )
    assert (
        response.status == "incomplete"
        and response.usage.output_tokens == chat[-1]["usage"]["completion_tokens"]
    )
    assert (
        t is not None
        and t.result is not None
        and t.result["output"][0]["content"][0]["text"] == response.output_text
    )


def test_a_tool_call_stream_becomes_function_call_items() -> None:
    out = translate(
        translator(True), (GOLDEN / "openai" / "chat_tool_calls_stream.sse").read_bytes(), pieces=11
    )
    response = final(out)
    assert [i.type for i in response.output] == ["message", "function_call", "function_call"]
    assert json.loads(response.output[1].arguments) == {"location": "Paris"}
    assert (response.output[1].call_id, response.output[2].name) == (
        "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "get_time",
    )
    names = [n for n, _ in events_of(out, [])]
    assert names.count("response.function_call_arguments.done") == 2


def test_a_reasoning_stream_becomes_a_reasoning_item() -> None:
    out = translate(
        translator(True), (GOLDEN / "openai" / "chat_reasoning_stream.sse").read_bytes()
    )
    response = final(out)
    assert [i.type for i in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "2+2 is 4." and response.output_text == "4"


@pytest.mark.parametrize(
    "upstream",
    [
        raw("chat_stream.sse")[:600],
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\ndata: {"error": {"message": "engine died"}}\n\n',
    ],
)
def test_a_stream_that_breaks_ends_with_response_failed(upstream: bytes) -> None:
    t = translator(True)
    out = translate(t, upstream)
    events = events_of(out, [])
    assert events[0][0] == "response.created" and events[-1][0] == "response.failed"
    failed = json.loads(events[-1][1])["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    names = [n for n, _ in events]
    assert names.count("response.output_item.added") == names.count("response.output_item.done")
    assert t is not None and t.failed and t.result is None


def test_errors_and_native_answers_pass_untouched() -> None:
    request = parse()
    for status, translated in [(404, True), (200, False), (500, False)]:
        assert (
            RESPONSES.response_translator(
                request, UpstreamAnswer(status, False, translated, "n", 1)
            )
            is None
        )


# -- a native pool's answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "sse", "finish"),
    [
        ("responses.json", False, "length"),
        ("responses_stream.sse", True, "length"),
        ("responses_tools_stream.sse", True, "length"),
        ("store_previous_stream.sse", True, "length"),
        ("responses_tool_output.json", False, "length"),
    ],
)
def test_reading_native_answers(name: str, sse: bool, finish: str) -> None:
    body = raw(name)
    expected = json.loads(body) if not sse else json.loads(events_of(body, [])[-1][1])["response"]
    readers = [
        RESPONSES.usage_reader(sse=sse),
        RESPONSES.answer_reader(sse=sse),
        responses_answer.ResponseReader(sse=sse),
    ]
    for i in range(0, len(body), 101):
        for r in readers:
            r.feed(body[i : i + 101])
    usage, filled, kept = readers[0].finish(), readers[1].finish(), readers[2].response()  # type: ignore[attr-defined]
    assert kept == expected
    assert usage is not None and usage.prompt_tokens == expected["usage"]["input_tokens"]
    assert filled is not None and filled.finish_reason == finish
    assert filled.content == expected["output"][0]["content"][0]["text"]


def test_function_calls_are_not_cached() -> None:
    body = {
        "object": "response",
        "status": "completed",
        "output": [{"type": "function_call", "name": "f", "arguments": "{}", "call_id": "c"}],
    }
    reader = RESPONSES.answer_reader(sse=False)
    reader.feed(json.dumps(body).encode())
    assert reader.finish() is None


@pytest.mark.parametrize("stream", [False, True])
def test_a_cache_hit_reads_back_and_is_kept(stream: bool) -> None:
    answer = CachedAnswer(
        content="Paris.", finish_reason="stop", prompt_tokens=7, completion_tokens=2
    )
    request = parse(stream=stream, previous_response_id="resp_0")
    rendered = RESPONSES.render_cached(request, answer, model="m", nonce="x", created=1)
    reader = RESPONSES.answer_reader(sse=stream)
    reader.feed(rendered.body)
    filled = reader.finish()
    assert filled is not None and (filled.content, filled.finish_reason, filled.prompt_tokens) == (
        "Paris.",
        "stop",
        7,
    )
    assert rendered.state is not None and rendered.state["id"] == "resp_cache_x"
    assert rendered.state["previous_response_id"] == "resp_0"
    if stream:
        assert final(rendered.body).output_text == "Paris."


def test_history_repeats_the_output_a_later_turn_needs() -> None:
    kept = json.loads(raw("responses.json"))
    kept["output"].append({"type": "web_search_call", "id": "ws"})
    assert [i["type"] for i in responses_answer.history_of(kept)] == ["message"]
