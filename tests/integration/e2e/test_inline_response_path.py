"""The inline response path (one ext_proc filter that also sends the response, as a Gateway API
Inference Extension gateway or the Istio overlay configure it), through a real Envoy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from pointsman.stack import Stack
from tests.integration.e2e.conftest import (
    make_stack,
    mixed_requests,
    post_and_collect_completions,
    streams_reset_by,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def inline_stack() -> Iterator[Stack]:
    with make_stack(response_path="inline") as s:
        yield s


def test_inline_stream_reports_headers_and_one_completion(inline_stack: Stack) -> None:
    events, responses = post_and_collect_completions(
        inline_stack,
        [
            (
                {
                    "model": "beta",
                    "messages": [{"role": "user", "content": "Hello"}],
                    "max_tokens": 4,
                    "stream": stream,
                    **({"stream_options": {"include_usage": True}} if stream else {}),
                },
                {"x-request-id": f"inline-{i}"},
            )
            for i, stream in enumerate((False, True))
        ],
        "inline-",
    )
    assert sorted(e.request_id for e in events) == ["inline-0", "inline-1"]
    by_id = {e.request_id: e for e in events}
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.headers["x-selected-model"] == "beta"
        assert r.headers["x-pointsman-endpoint"] == r.headers["x-sim-endpoint"]
        e = by_id[f"inline-{i}"]
        assert e.endpoint == r.headers["x-sim-endpoint"]
        assert e.completion_tokens == 4
    assert by_id["inline-1"].stream and not by_id["inline-0"].stream


# -- translation and state on the inline path: the decision stream sees the response anyway ----


@pytest.fixture(scope="module")
def full_duplex_inline() -> Iterator[Stack]:
    with make_stack(
        models=["beta"], replicas=1, response_path="inline", body_mode="FULL_DUPLEX_STREAMED"
    ) as s:
        yield s


@pytest.mark.parametrize("which", ["inline_stack", "full_duplex_inline"])
def test_translation_and_state_inline(which: str, request: pytest.FixtureRequest) -> None:
    stack: Stack = request.getfixturevalue(which)
    client = anthropic.Anthropic(base_url=stack.gateway_url, api_key="k", max_retries=0)
    messages: Any = [{"role": "user", "content": "Hello"}]
    message = client.messages.create(model="beta", max_tokens=5, messages=messages)
    assert message.content[0].text and message.usage.output_tokens == 5  # type: ignore[union-attr]
    with client.messages.stream(model="beta", max_tokens=5, messages=messages) as s:
        assert "".join(s.text_stream) and s.get_final_message().stop_reason == "max_tokens"
    responses = openai.OpenAI(
        base_url=f"{stack.gateway_url}/v1", api_key="k", max_retries=0
    ).responses
    first = responses.create(model="beta", input="Hello", max_output_tokens=3)
    second = responses.create(
        model="beta", input="More", previous_response_id=first.id, max_output_tokens=3
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens
    assert responses.retrieve(second.id).output_text == second.output_text


@pytest.mark.parametrize("which", ["inline_stack", "full_duplex_inline"])
def test_the_shim_closes_inline_streams_itself(which: str, request: pytest.FixtureRequest) -> None:
    """The inline decision stream ends when the response has (see the observer layout's test
    in test_request_path.py): Envoy resets none of them."""
    stack: Stack = request.getfixturevalue(which)
    assert streams_reset_by(stack, lambda: mixed_requests(stack)) == {
        "decision": 0,
        "observer": 0,
    }
