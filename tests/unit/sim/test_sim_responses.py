"""The Responses API's pure parts: input -> messages, request checks, the store, the events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pointsman.sim.config import SimConfig
from pointsman.sim.openai import ApiError
from pointsman.sim.responses import (
    ResponsesRequest,
    ResponseStore,
    ResponseWriter,
    Stored,
    input_messages,
    parse_responses,
)
from pointsman.sim.tokens import count_tokens, render_chat

CFG = SimConfig(model="base", max_model_len=1000, default_max_tokens=50)


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "base", **fields}).encode()


def test_input_items_become_chat_messages() -> None:
    assert input_messages("hi") == [{"role": "user", "content": "hi"}]
    items = [
        {"type": "message", "role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"text": "b"}]},
        {"type": "reasoning", "summary": []},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": '{"x": 1}'},
        {"type": "function_call_output", "call_id": "c", "output": "42"},
    ]
    assert input_messages(items) == [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": 'f({"x": 1})'},
        {"role": "tool", "content": "42"},
    ]


@pytest.mark.parametrize(
    ("value", "param"),
    [
        (5, "body.input"),
        ({"role": "user"}, "body.input"),
        (["text"], "body.input.0"),
        ([{"role": "user", "content": "ok"}, {"role": "robot", "content": "x"}], "body.input.1"),
        ([{"type": "function_call", "name": "f"}], "body.input.0"),
        ([{"type": "image_generation_call"}], "body.input.0"),
    ],
)
def test_bad_input_is_a_schema_error(value: Any, param: str) -> None:
    with pytest.raises(ApiError) as info:
        input_messages(value)
    err = json.loads(info.value.body())["error"]
    assert (info.value.status, err["type"], err["param"]) == (400, "Bad Request", param)
    assert err["message"].startswith(("1 validation error:", "2 validation errors:"))


def test_instructions_come_first_and_the_prompt_is_counted_as_chat() -> None:
    req = parse_responses(body(input="hello", instructions="be brief"), CFG, None)
    assert req.messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert req.parsed.text == render_chat(req.messages)
    assert req.parsed.prompt_len == count_tokens(req.parsed.text)
    assert (req.parsed.max_out, req.parsed.finish_reason) == (50, "stop")
    limited = parse_responses(body(input="x", max_output_tokens=7, stream=True), CFG, None)
    assert (limited.parsed.max_out, limited.parsed.finish_reason) == (7, "length")
    assert limited.parsed.stream


def test_echoed_fields_have_vllms_defaults() -> None:
    echo = parse_responses(body(input="x"), CFG, None).echo
    assert echo["tool_choice"] == "none" and echo["tools"] == []
    assert (echo["temperature"], echo["top_p"], echo["truncation"]) == (1.0, 1.0, "disabled")
    tool = {"type": "function", "name": "f", "parameters": {}}
    echo = parse_responses(body(input="x", tools=[tool], temperature=0), CFG, None).echo
    assert echo["tool_choice"] == "auto" and echo["temperature"] == 0.0
    assert echo["tools"][0]["strict"] is None and echo["tools"][0]["name"] == "f"


def stored_turn(store: ResponseStore) -> str:
    writer = ResponseWriter(
        parse_responses(body(input="first", instructions="old rules"), CFG, store),
        "resp_1",
        0,
    )
    writer.full(" answer", 1, 0, "stop")
    assert writer.final is not None
    store.put("resp_1", Stored(writer.final, writer.req.messages))
    return "resp_1"


def test_previous_turns_are_rebuilt_as_vllm_does() -> None:
    store = ResponseStore(10)
    rid = stored_turn(store)
    req = parse_responses(
        body(input="second", previous_response_id=rid, instructions="new rules"), CFG, store
    )
    # new instructions first; the old ones are dropped; the earlier answer is an assistant turn
    assert req.messages == [
        {"role": "system", "content": "new rules"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": " answer"},
        {"role": "user", "content": "second"},
    ]
    assert req.echo["previous_response_id"] == rid and req.store


@pytest.mark.parametrize("store", [None, ResponseStore(10)])
def test_unknown_previous_response_is_404(store: ResponseStore | None) -> None:
    with pytest.raises(ApiError) as info:
        parse_responses(body(input="x", previous_response_id="resp_nope"), CFG, store)
    assert info.value.status == 404
    assert json.loads(info.value.body())["error"] == {
        "message": "Response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": "response_id",
        "code": 404,
    }


def test_store_is_kept_only_when_the_server_keeps_responses() -> None:
    assert not parse_responses(body(input="x", store=True), CFG, None).store
    assert parse_responses(body(input="x"), CFG, ResponseStore(1)).store
    assert not parse_responses(body(input="x", store=False), CFG, ResponseStore(1)).store


@pytest.mark.parametrize("store", [None, ResponseStore(1)])
def test_background_is_refused(store: ResponseStore | None) -> None:
    with pytest.raises(ApiError) as info:
        parse_responses(body(input="x", background=True), CFG, store)
    assert info.value.status == 400 and info.value.param == "background"


def test_store_forgets_the_oldest() -> None:
    store = ResponseStore(2)
    for rid in ("a", "b", "c"):
        store.put(rid, Stored({}, []))
    assert store.get("a") is None and store.get("c") is not None and len(store) == 2


def writer(max_out: int | None = 3) -> ResponseWriter:
    fields: dict[str, Any] = {"input": "x"}
    if max_out is not None:
        fields["max_output_tokens"] = max_out
    req: ResponsesRequest = parse_responses(body(**fields), CFG, None)
    return ResponseWriter(req, "resp_00000001", 1700000000)


def events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for chunk in raw.split(b"\n\n")[:-1]:
        name, data = chunk.split(b"\n")
        out.append((name.removeprefix(b"event: ").decode(), json.loads(data[6:])))
    return out


def test_stream_events_in_order_with_sequence_numbers() -> None:
    w = writer()
    raw = w.opening() + w.first() + w.delta(" a") + w.delta("") + w.closing(" b c", 3, 2, "length")
    got = events(raw)
    assert [name for name, _ in got] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [d["sequence_number"] for _, d in got] == list(range(10))
    assert all(d["type"] == name for name, d in got)
    assert got[0][1]["response"]["status"] == "in_progress"
    assert got[0][1]["response"]["usage"] is None
    assert got[6][1]["text"] == " a b c"
    final = got[-1][1]["response"]
    assert final == w.final
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["id"] == "msg_00000001"
    assert final["usage"]["output_tokens"] == 3
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 2


def test_an_answer_that_ends_by_itself_is_completed() -> None:
    w = writer(None)
    out = json.loads(w.full(" done", 1, -1, "stop"))
    assert out["status"] == "completed" and out["incomplete_details"] is None
    assert out["output"][0]["content"][0]["text"] == " done"
    assert out["usage"]["input_tokens_details"]["cached_tokens"] == 0
    assert out["usage"]["total_tokens"] == out["usage"]["input_tokens"] + 1
