"""The dialect seam: the OpenAI dialects render cache hits, and a third API plugs in by one line.

The rendering tests moved here from the classifier's cache tests when rendering moved to the shim.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pointsman.v1 import PickReply, PickStatus
from pointsman.v1.classify import CachedAnswer, ClassifyReply
from pointsman_shim.config import ShimConfig
from pointsman_shim.core.dialects import openai_chat, openai_completions
from pointsman_shim.core.dialects.base import (
    AnswerReading,
    BodyChanges,
    ChatTurn,
    Dialect,
    LLMRequest,
    Rendered,
    Upstream,
    UsageReading,
)
from pointsman_shim.core.dialects.registry import DIALECTS, Registry
from pointsman_shim.core.errors import RequestError
from pointsman_shim.handlers import Processor
from tests.helpers.extproc import (
    ScriptedBus,
    body_msg,
    headers_msg,
    response_body_msg,
    response_headers_msg,
    run,
    set_headers,
)

CHAT = openai_chat.DIALECT
COMPLETIONS = openai_completions.DIALECT
ANSWER = CachedAnswer(
    content="Paris is the capital.", finish_reason="stop", prompt_tokens=7, completion_tokens=5
)


def parse(dialect: Dialect, **fields: Any) -> LLMRequest:
    prompt: dict[str, Any] = (
        {"prompt": "q"}
        if dialect is COMPLETIONS
        else {"messages": [{"role": "user", "content": "q"}]}
    )
    return dialect.parse(json.dumps({"model": "m", **prompt, **fields}).encode(), max_bytes=1 << 20)


def render(dialect: Dialect, answer: CachedAnswer = ANSWER, **fields: Any) -> Rendered:
    return dialect.render_cached(
        parse(dialect, **fields), answer, model="alpha", nonce="id1", created=1
    )


def events(rendered: Rendered) -> list[dict[str, Any]]:
    assert rendered.content_type == "text/event-stream"
    raw = rendered.body.decode()
    assert raw.endswith("data: [DONE]\n\n")
    parts = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert parts[-1] == "[DONE]"
    return [json.loads(p) for p in parts[:-1]]


# -- rendering a semantic-cache hit ------------------------------------------------------------


def test_render_json_chat_and_completion() -> None:
    chat = render(CHAT)
    assert chat.content_type == "application/json"
    body = json.loads(chat.body)
    assert (body["id"], body["object"], body["model"]) == (
        "chatcmpl-cache-id1",
        "chat.completion",
        "alpha",
    )
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ANSWER.content}
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    text = json.loads(render(COMPLETIONS).body)
    assert (text["id"], text["object"]) == ("cmpl-cache-id1", "text_completion")
    assert text["choices"][0]["text"] == ANSWER.content
    bare = json.loads(render(CHAT, CachedAnswer(content="x", finish_reason=None)).body)
    assert "usage" not in bare and bare["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("include_usage", [False, True])
def test_render_sse_chat(include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = events(render(CHAT, stream=True, **options))
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-cache-id1" for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == ANSWER.content
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 12
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)


def test_render_sse_usage_unknown_is_zero() -> None:
    stream = {"stream": True, "stream_options": {"include_usage": True}}
    chunks = events(render(COMPLETIONS, CachedAnswer(content="x"), **stream))
    assert chunks[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert [c["choices"][0]["text"] for c in chunks[:-1]] == ["x", ""]


@pytest.mark.parametrize("dialect", [CHAT, COMPLETIONS], ids=lambda d: d.name)
@pytest.mark.parametrize("stream", [False, True])
def test_a_rendered_hit_reads_back_as_the_stored_answer(dialect: Dialect, stream: bool) -> None:
    """What a hit renders is exactly what the cache fill would reassemble, in any chunking."""
    fields = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    raw = render(dialect, **fields).body
    for step in (1, 7, len(raw)):
        reader = dialect.answer_reader(sse=stream)
        usage = dialect.usage_reader(sse=stream)
        for i in range(0, len(raw), step):
            reader.feed(raw[i : i + step])
            usage.feed(raw[i : i + step])
        got = reader.finish()
        assert got is not None
        assert (got.content, got.finish_reason) == (ANSWER.content, "stop")
        assert (got.prompt_tokens, got.completion_tokens) == (7, 5)
        read = usage.finish()
        assert read is not None and read.total_tokens == 12


@given(content=st.text(min_size=1, max_size=200), stream=st.booleans(), chat=st.booleans())
def test_any_answer_round_trips(content: str, stream: bool, chat: bool) -> None:
    dialect = CHAT if chat else COMPLETIONS
    rendered = render(dialect, CachedAnswer(content=content), stream=stream)
    reader = dialect.answer_reader(sse=stream)
    reader.feed(rendered.body)
    got = reader.finish()
    assert got is not None and got.content == content


# -- the registry ------------------------------------------------------------------------------


def test_a_name_or_a_path_has_one_owner() -> None:
    with pytest.raises(ValueError, match="two dialects are named 'openai-chat'"):
        Registry(CHAT, CHAT)
    other = Toy()
    other.paths = ("/v1/completions",)
    with pytest.raises(ValueError, match="belongs to 'openai-completions' and 'toy'"):
        Registry(COMPLETIONS, other)
    assert DIALECTS.named("openai-chat") is CHAT and DIALECTS.named("nope") is None


# -- a third API -------------------------------------------------------------------------------


class Toy:
    """A made-up API that its pools do not speak: ``{"model", "input"}`` in, ``{"output"}`` out,
    sent upstream as chat completions. The whole of a third dialect: this class and one line."""

    name = "toy"
    paths: tuple[str, ...] = ("/v1/toy",)

    def parse(self, raw: bytes, *, max_bytes: int) -> LLMRequest:
        body = json.loads(raw) if raw.strip() else None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise RequestError(400, "'model' is required", reason="missing_model", param="model")
        turns = [ChatTurn("user", str(body.get("input", "")))]
        return LLMRequest(self.name, body["model"], body, turns=turns)

    def rewrite(self, request: LLMRequest, changes: BodyChanges) -> Upstream:
        chat = {
            "model": changes.model,
            "messages": [{"role": "user", "content": request.turns[0].content}],
        }
        return Upstream(json.dumps(chat).encode(), path="/v1/chat/completions")

    def usage_reader(self, *, sse: bool) -> UsageReading:
        return CHAT.usage_reader(sse=sse)  # the upstream answers in chat completions

    def answer_reader(self, *, sse: bool) -> AnswerReading:
        return CHAT.answer_reader(sse=sse)

    def render_cached(
        self, request: LLMRequest, answer: CachedAnswer, *, model: str, nonce: str, created: int
    ) -> Rendered:
        return Rendered(
            json.dumps({"id": f"toy-{nonce}", "output": answer.content}).encode(),
            "application/json",
        )

    def error_body(
        self, message: str, *, type: str, code: str, param: str | None = None, status: int = 400
    ) -> bytes:
        return json.dumps({"type": "error", "error": {"type": type, "message": message}}).encode()


def toy_processor(**script: Any) -> tuple[Processor, ScriptedBus]:
    bus = ScriptedBus(**script)
    registry = Registry(CHAT, COMPLETIONS, Toy())  # the one line a new API adds
    config = ShimConfig(classifier={"enabled": True})  # type: ignore[arg-type]
    processor = Processor(config, bus, new_id=lambda: "n" * 32, dialects=registry)  # type: ignore[arg-type]
    return processor, bus


async def test_a_translating_dialect_routes_through_the_same_policy() -> None:
    chat_answer = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    processor, bus = toy_processor(
        classify=ClassifyReply(model="m2", cache_store="tok"),
        pick=PickReply(status=PickStatus.OK, endpoints=["10.0.0.1:8000"]),
    )
    out = await run(
        processor,
        [
            headers_msg("/v1/toy", {"x-request-id": "r1"}),
            body_msg(b'{"model": "auto", "input": "hello"}'),
            response_headers_msg(200, served="10.0.0.1:8000"),
            response_body_msg(json.dumps(chat_answer).encode()),
        ],
    )
    routed = out[1].request_body.response
    headers = set_headers(routed)
    assert headers[":path"] == "/v1/chat/completions"
    assert json.loads(routed.body_mutation.body) == {
        "model": "m2",
        "messages": [{"role": "user", "content": "hello"}],
    }
    assert headers["content-length"] == str(len(routed.body_mutation.body))
    context = out[1].dynamic_metadata.fields["pointsman"].struct_value.fields
    assert context["dialect"].string_value == "toy"
    classified = bus.calls[0][1]
    assert classified is not None and classified.messages[0].content == "hello"  # type: ignore[attr-defined]
    published = {name: msg for name, msg in bus.calls}
    assert published["publish cache store"].content == "hi"  # type: ignore[union-attr]
    assert published["publish completion"].total_tokens == 3  # type: ignore[union-attr]


async def test_a_dialects_errors_and_cache_hits_speak_its_format() -> None:
    processor, _ = toy_processor(
        classify=ClassifyReply(model="m2", cached=CachedAnswer(content="from cache"))
    )
    bad = await run(processor, [headers_msg("/v1/toy"), body_msg(b"[]")])
    error = bad[-1].immediate_response
    assert error.status.code == 400
    assert json.loads(error.body) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "'model' is required"},
    }
    assert set_headers(error)["x-pointsman-error"] == "missing_model"
    hit = await run(processor, [headers_msg("/v1/toy"), body_msg(b'{"model": "m"}')])
    assert json.loads(hit[-1].immediate_response.body) == {
        "id": f"toy-{'n' * 24}",
        "output": "from cache",
    }
