"""The Responses and Messages APIs end to end, spoken by the official ``openai`` and
``anthropic`` clients: client -> Envoy -> shim -> picker -> simulated vLLM, with Redis.

Two pools: ``alpha`` serves both APIs natively (its simulators run with ``--anthropic``), ``beta``
gets both translated to chat completions (``shim.apis``). Every test runs against both where
both apply, so a native and a translated pool must answer alike. The picker's profile scores
session affinity, so a conversation's turns show which endpoint its session is bound to.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from pointsman.stack import Stack
from tests.integration.e2e.conftest import SIM_ARGS, make_stack

pytestmark = pytest.mark.integration

NATIVE, TRANSLATED = "alpha", "beta"
BOTH = pytest.mark.parametrize("model", [NATIVE, TRANSLATED])
WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
STICKY = [
    {"plugin": "queue-scorer", "weight": 1},
    {"plugin": "session-affinity-scorer", "weight": 10},
    "max-score-picker",
]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with make_stack(
        models=[NATIVE, TRANSLATED],
        replicas=2,
        sim_args=[*SIM_ARGS, "--anthropic"],
        redis=True,
        overrides={
            "shim": {
                "pick_timeout_ms": 300,
                "apis": {
                    "pools": {
                        NATIVE: {"responses": "native", "messages": "native"},
                        TRANSLATED: {"responses": "chat", "messages": "chat"},
                    }
                },
            },
            "picker": {"profiles": {"sticky": STICKY}, "profile": "sticky"},
        },
    ) as s:
        yield s


def oai(stack: Stack, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.gateway_url}/v1", api_key=key, max_retries=0)


def claude(stack: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.gateway_url, api_key="sk-test", max_retries=0)


def shim_metric(stack: Stack, name: str, **labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[len(name) + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the Responses API --------------------------------------------------------------------------


@BOTH
def test_responses_create(stack: Stack, model: str) -> None:
    raw = oai(stack).responses.with_raw_response.create(
        model=model, input="Hello there", max_output_tokens=8
    )
    response = raw.parse()
    assert response.output_text and response.status == "incomplete"
    assert response.usage is not None and response.usage.output_tokens == 8
    assert raw.headers["x-selected-model"] == model
    assert raw.headers["x-pointsman-endpoint"] in stack.pools[model]
    assert raw.headers["x-pointsman-session"] == "conversation"


@BOTH
def test_responses_stream(stack: Stack, model: str) -> None:
    deltas = []
    with oai(stack).responses.stream(model=model, input="Stream to me", max_output_tokens=6) as s:
        for event in s:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = s.get_final_response()
    assert "".join(deltas) == final.output_text and final.output_text
    assert final.usage is not None and final.usage.output_tokens == 6


@BOTH
def test_a_conversation_by_previous_response_id(stack: Stack, model: str) -> None:
    client = oai(stack)
    first = client.responses.with_raw_response.create(
        model=model, input="Tell me about prefix caches", max_output_tokens=4
    )
    one = first.parse()
    second = client.responses.with_raw_response.create(
        model=model, input="And then?", previous_response_id=one.id, max_output_tokens=4
    )
    two = second.parse()
    with client.responses.stream(
        model=model, input="Go on", previous_response_id=two.id, max_output_tokens=4
    ) as s:
        three = s.get_final_response()
    # the engine got the whole conversation each time: its prompt grew by each turn
    assert one.usage is not None and two.usage is not None and three.usage is not None
    assert one.usage.input_tokens < two.usage.input_tokens < three.usage.input_tokens
    # one session from the first turn on, bound to one endpoint
    assert second.headers["x-pointsman-session"] == "previous_response"
    assert first.headers["x-pointsman-endpoint"] == second.headers["x-pointsman-endpoint"]
    kept = client.responses.retrieve(three.id)
    assert (kept.id, kept.output_text, kept.previous_response_id) == (
        three.id,
        three.output_text,
        two.id,
    )


@BOTH
def test_delete_and_unknown_ids(stack: Stack, model: str) -> None:
    client = oai(stack)
    response = client.responses.create(model=model, input="Forget me", max_output_tokens=2)
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(response.id)
    assert gone.value.response.headers["x-pointsman-error"] == "response_not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(
            model=model, input="hi", previous_response_id=response.id, max_output_tokens=2
        )
    body = unknown.value.response.json()
    assert body["error"]["param"] == "previous_response_id"
    assert body["error"]["message"] == f"Response with id '{response.id}' not found."
    with pytest.raises(openai.NotFoundError):
        client.responses.delete("resp_never_was")


def test_responses_are_kept_per_tenant_and_only_when_asked(stack: Stack) -> None:
    mine = oai(stack, "sk-mine").responses.create(model=NATIVE, input="secret", max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        oai(stack, "sk-theirs").responses.retrieve(mine.id)
    assert oai(stack, "sk-mine").responses.retrieve(mine.id).id == mine.id
    unkept = oai(stack).responses.create(
        model=TRANSLATED, input="hi", store=False, max_output_tokens=2
    )
    with pytest.raises(openai.NotFoundError):
        oai(stack).responses.retrieve(unkept.id)


def test_tools_through_a_translated_pool(stack: Stack) -> None:
    client = oai(stack)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    call = client.responses.create(
        model=TRANSLATED,
        input="What is the weather in Paris?",
        tools=tools,
        tool_choice="required",
        max_output_tokens=8,
    )
    [item] = [i for i in call.output if i.type == "function_call"]
    assert item.name == "get_weather" and json.loads(item.arguments) == {"city": "sim"}
    answer = client.responses.create(
        model=TRANSLATED,
        previous_response_id=call.id,
        input=[{"type": "function_call_output", "call_id": item.call_id, "output": "sunny"}],
        tools=tools,
        max_output_tokens=4,
    )
    assert answer.output_text
    with client.responses.stream(
        model=TRANSLATED, input="Weather?", tools=tools, tool_choice="required"
    ) as s:
        streamed = s.get_final_response()
    assert [i.type for i in streamed.output] == ["function_call"]


def test_tools_to_a_native_pool(stack: Stack) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    response = oai(stack).responses.create(
        model=NATIVE, input="Weather in Paris?", tools=tools, max_output_tokens=4
    )
    assert response.output_text  # vLLM without a tool parser answers text


def test_bad_responses_input_is_a_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai(stack).responses.create(model=NATIVE, input=[{"type": "telepathy"}])  # type: ignore[list-item]
    assert bad.value.response.headers["x-pointsman-error"] == "invalid_input_item"


# -- the Messages API ---------------------------------------------------------------------------


@BOTH
def test_messages_create(stack: Stack, model: str) -> None:
    raw = claude(stack).messages.with_raw_response.create(
        model=model,
        max_tokens=8,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hello there"}],
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 8
    assert message.usage.input_tokens > 0
    assert raw.headers["x-selected-model"] == model


@BOTH
def test_messages_stream(stack: Stack, model: str) -> None:
    with claude(stack).messages.stream(
        model=model, max_tokens=6, messages=[{"role": "user", "content": "Stream to me"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.output_tokens == 6 and final.usage.input_tokens > 0


def test_tool_use_through_a_translated_pool(stack: Stack) -> None:
    client = claude(stack)
    tools: Any = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER}]
    asked: Any = [{"role": "user", "content": "Weather in Paris?"}]
    call = client.messages.create(
        model=TRANSLATED,
        max_tokens=32,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=asked,
    )
    [use] = [b for b in call.content if b.type == "tool_use"]
    assert (use.name, use.input, call.stop_reason) == ("get_weather", {"city": "sim"}, "tool_use")
    followed = client.messages.create(
        model=TRANSLATED,
        max_tokens=4,
        tools=tools,
        messages=[
            *asked,
            {"role": "assistant", "content": [b.model_dump() for b in call.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}],
            },
        ],
    )
    assert (
        followed.content[0].type == "text" and followed.usage.input_tokens > call.usage.input_tokens
    )
    with client.messages.stream(
        model=TRANSLATED, max_tokens=32, tools=tools, tool_choice={"type": "any"}, messages=asked
    ) as s:
        streamed = s.get_final_message()
    assert [b.type for b in streamed.content] == ["tool_use"]
    assert streamed.content[0].input == {"city": "sim"}  # type: ignore[union-attr]


def test_thinking_reaches_a_translated_pool(stack: Stack) -> None:
    message = claude(stack).messages.create(
        model=TRANSLATED,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "Think first"}],
    )
    assert message.content


def test_count_tokens_natively_and_through_tokenize(stack: Stack) -> None:
    messages: Any = [{"role": "user", "content": "How many tokens is this?"}]
    counts = {
        model: claude(stack).messages.count_tokens(
            model=model, system="Be brief.", messages=messages
        )
        for model in (NATIVE, TRANSLATED)
    }
    assert counts[NATIVE].input_tokens == counts[TRANSLATED].input_tokens > 0


@BOTH
def test_messages_errors_speak_anthropic(stack: Stack, model: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude(stack).messages.create(
            model=model,
            max_tokens=4,
            messages=[{"role": "user", "content": [{"type": "telepathy"}]}],  # type: ignore[list-item, typeddict-item]
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert bad.value.response.headers["x-pointsman-error"] == "invalid_content_block"
    r = httpx.post(
        f"{stack.gateway_url}/v1/messages",
        json={"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]},
    )
    assert r.status_code == 404
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"


def test_an_engine_error_from_a_native_pool_speaks_anthropic(stack: Stack) -> None:
    # the engine's own schema error (vLLM answers these in OpenAI's shape)
    r = httpx.post(
        f"{stack.gateway_url}/v1/messages",
        json={
            "model": NATIVE,
            "max_tokens": 100000,
            "messages": [{"role": "user", "content": "too long an answer"}],
        },
    )
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"


# -- both ---------------------------------------------------------------------------------------


def test_every_api_path_reaches_the_shim_through_envoy(stack: Stack) -> None:
    """Envoy must hand every path of these APIs to the shim (the shim's mark: a routing decision
    or its own answer). A gateway that serves only a list of paths must list these."""
    g = stack.gateway_url
    routed = [
        httpx.post(
            f"{g}/v1/responses", json={"model": NATIVE, "input": "hi", "max_output_tokens": 1}
        ),
        httpx.post(
            f"{g}/v1/messages",
            json={
                "model": NATIVE,
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
        httpx.post(
            f"{g}/v1/messages/count_tokens",
            json={"model": NATIVE, "messages": [{"role": "user", "content": "hi"}]},
        ),
    ]
    for r in routed:
        assert r.status_code == 200 and r.headers["x-selected-model"] == NATIVE, r.text
    answered = [
        httpx.get(f"{g}/v1/responses/resp_nope"),
        httpx.delete(f"{g}/v1/responses/resp_nope"),
    ]
    for r in answered:
        assert r.status_code == 404, r.text
        assert r.headers["x-pointsman-error"] == "response_not_found"


def test_translations_and_usage_are_counted(stack: Stack) -> None:
    before = shim_metric(stack, "pointsman_shim_tokens_total", model=TRANSLATED, kind="completion")
    ok = shim_metric(stack, "pointsman_shim_translations_total", api="messages", outcome="ok")
    claude(stack).messages.create(
        model=TRANSLATED, max_tokens=5, messages=[{"role": "user", "content": "count me"}]
    )
    assert (
        shim_metric(stack, "pointsman_shim_translations_total", api="messages", outcome="ok")
        == ok + 1
    )

    def tokens() -> float:
        return shim_metric(
            stack, "pointsman_shim_tokens_total", model=TRANSLATED, kind="completion"
        )

    # the observer reads the engine's usage off the critical path: wait for it
    import time

    deadline = time.monotonic() + 60
    while tokens() < before + 5:
        assert time.monotonic() < deadline, "the translated answer's usage was never counted"
        time.sleep(0.05)


def test_redis_down_stateful_calls_503_stateless_work(stack: Stack) -> None:
    """Last in the module: it stops Redis."""
    client = oai(stack)
    kept = client.responses.create(model=NATIVE, input="before", max_output_tokens=2)
    stack.stop_service("redis-server")
    with pytest.raises(openai.InternalServerError) as down:
        client.responses.retrieve(kept.id)
    assert down.value.status_code == 503
    assert down.value.response.headers["x-pointsman-error"] == "store_unavailable"
    with pytest.raises(openai.InternalServerError):
        client.responses.create(
            model=TRANSLATED, input="x", previous_response_id=kept.id, max_output_tokens=2
        )
    for model in (NATIVE, TRANSLATED):
        assert client.responses.create(
            model=model, input="still here", max_output_tokens=2
        ).output_text
