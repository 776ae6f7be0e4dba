"""Pinned ext_proc exchanges: exact messages in, exact messages out.

Each case feeds real ``ProcessingRequest`` protobuf messages through the shim's handler, with a
bus that answers from the case's script (what the classifier and the picker replied, or how the
call failed), and compares the whole exchange with a file in ``pinned/``: every message Envoy sent,
every bus request the shim made, every ``ProcessingResponse`` it answered (protobuf text format,
so header order, metadata and bodies are all pinned), and the change of every shim counter. The
files were first written by the handler before its policy moved into the pure core (and before
the shim rendered cache hits), so they hold the Envoy contract the refactor had to keep. The
real bus is covered by the integration tests.

A deliberate change of behaviour rewrites the files: ``PINNED_UPDATE=1 pytest <this file>``, then
read the diff before committing it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2, text_format
from prometheus_client import REGISTRY

from pointsman.debug import DebugConfig
from pointsman.v1 import (
    ModelsReply,
    PickReply,
    PickStatus,
    PoolInfo,
    encode,
)
from pointsman.v1.classify import (
    Block,
    CachedAnswer,
    ClassifyReply,
    ImmediateAnswer,
)
from pointsman_shim.bus import BusTooLarge, BusUnavailable
from pointsman_shim.config import ShimConfig
from pointsman_shim.handlers import Processor
from tests.helpers.extproc import (
    Reply,
    ScriptedBus,
    body_msg,
    headers_msg,
    response_body_msg,
    response_headers_msg,
)

PINNED = Path(__file__).parent / "pinned"
NOW = 1_700_000_000.0
NEW_ID = "0123456789abcdef0123456789abcdef"


def _json(message: msgspec.Struct) -> str:
    return json.dumps(json.loads(encode(message)), indent=1, sort_keys=True)


def _text(message: Any) -> str:
    return text_format.MessageToString(message, as_utf8=True).rstrip("\n")


def _counters() -> dict[str, float]:
    """Every ``pointsman_shim_*_total`` sample by name and labels."""
    out: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if not metric.name.startswith("pointsman_shim_") or metric.type != "counter":
            continue
        for s in metric.samples:
            if s.name.endswith("_total"):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


# -- requests ----------------------------------------------------------------------------------


def chat(model: str = "m1", **fields: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "What is 2+2?"}], **fields}
    return json.dumps(body).encode()


def completion(model: str = "m1", **fields: Any) -> bytes:
    return json.dumps({"model": model, "prompt": "2+2=", **fields}).encode()


def rid(path: str, extra: dict[str, str] | None = None, **kw: Any) -> pb.ProcessingRequest:
    """Request headers with a fixed request id (the shim takes it instead of making one)."""
    return headers_msg(path, {"x-request-id": "req-1", **(extra or {})}, **kw)


def modes(request: pb.ProcessingRequest, body: int, response: int) -> pb.ProcessingRequest:
    request.protocol_config.request_body_mode = body  # type: ignore[assignment]
    request.protocol_config.response_body_mode = response  # type: ignore[assignment]
    return request


def observed(request: pb.ProcessingRequest, context: dict[str, Any]) -> pb.ProcessingRequest:
    request.observability_mode = True
    value = struct_pb2.Struct()
    value.update(context)
    request.metadata_context.filter_metadata["pointsman"].CopyFrom(value)
    return request


def served_by(request: pb.ProcessingRequest, address: str) -> pb.ProcessingRequest:
    request.attributes["envoy.filters.http.ext_proc"].update({"upstream.address": address})
    return request


def sse(*chunks: dict[str, Any], done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)
    return out + (b"data: [DONE]\n\n" if done else b"")


USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
JSON_ANSWER = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "m1",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}
        ],
        "usage": USAGE,
    }
).encode()
CHAT_SSE = sse(
    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"choices": [{"index": 0, "delta": {"content": "Four."}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    {"choices": [], "usage": USAGE},
)
TEXT_SSE = sse(
    {"choices": [{"index": 0, "text": "4"}]},
    {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}], "usage": USAGE},
)

OK = PickReply(status=PickStatus.OK, endpoints=["10.0.0.1:8000"], picker="p")
TWO = PickReply(
    status=PickStatus.OK,
    endpoints=["10.0.0.2:8000", "10.0.0.1:8000", "10.0.0.3:8000"],
    prefill="10.0.0.9:8000",
    scores={"10.0.0.2:8000": 0.9, "10.0.0.1:8000": 0.5},
)
CLASSIFIED = ClassifyReply(
    model="math-m",
    selected=True,
    category="math",
    confidence=0.93,
    reasoning=True,
    body_set={"chat_template_kwargs": {"enable_thinking": True}},
    system_prompt="Be precise.",
    headers={"x-pointsman-category": "math", "x-pointsman-cache": "miss"},
    cache_store="tok-1",
)
CACHE_HEADERS = {"x-pointsman-cache": "hit", "x-pointsman-cache-similarity": "0.9731"}


def cache_hit() -> ClassifyReply:
    """A semantic-cache hit: the stored answer, which the shim renders for the client's API.

    Its pinned answers were rendered by the classifier before rendering moved to the shim."""
    answer = CachedAnswer(
        content="Four.",
        finish_reason="stop",
        prompt_tokens=5,
        completion_tokens=2,
        model="m1",
        similarity=0.9731,
    )
    return ClassifyReply(model="m1", headers=dict(CACHE_HEADERS), cached=answer)


# -- cases -------------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    messages: Callable[[], list[pb.ProcessingRequest]]
    config: dict[str, Any] = field(default_factory=dict)
    classify: Reply = None
    pick: Reply = None
    models: Reply = None


CLASSIFIER_ON = {"classifier": {"enabled": True}}
#: A classifier that only selects models (it blocks nothing): it may fail open.
SELECT_ONLY = {"classifier": {"enabled": True, "safety_blocks": False}}
CLASSIFIER_CLOSED = {"classifier": {"enabled": True, "failure_mode": "fail-closed"}}
CONTEXT = {
    "request_id": "req-obs",
    "model": "m1",
    "route": "picked",
    "endpoints": ["10.0.0.1:8000"],
    "stream": True,
    "started": NOW - 2,
    "cache_token": "tok-obs",
}

CASES = [
    Case(
        "chat_buffered_inline",
        lambda: [
            rid(
                "/v1/chat/completions",
                {
                    "x-gateway-destination-endpoint": "6.6.6.6:1",
                    "x-pointsman-route": "forged",
                    "x-pointsman-priority": "1",
                    "x-session-id": "s-1",
                    "authorization": "Bearer sk-1",
                },
                subset=["10.0.0.1:8000", "10.0.0.2:8000"],
            ),
            body_msg(chat()),
            response_headers_msg(200, served="10.0.0.1:8000"),
            response_body_msg(JSON_ANSWER[:40], eos=False),
            response_body_msg(JSON_ANSWER[40:]),
        ],
        pick=OK,
    ),
    Case(
        "chat_auto_default_model_full_duplex",
        lambda: [
            modes(rid("/v1/chat/completions"), ProcessingMode.FULL_DUPLEX_STREAMED, 0),
            body_msg(chat("auto")[:30], eos=False),
            body_msg(chat("auto")[30:]),
        ],
        config={"default_model": "m1"},
        pick=OK,
    ),
    Case(
        "chat_full_duplex_by_config_untouched_body",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        config={"body_mode": "FULL_DUPLEX_STREAMED"},
        pick=OK,
    ),
    Case(
        "completion_stream_debug_scores_inline",
        lambda: [
            rid("/v1/completions?x=1", {"x-pointsman-debug": "1"}),
            body_msg(completion(stream=True, stream_options={"include_usage": True})),
            served_by(response_headers_msg(200, content_type="text/event-stream"), "10.0.0.1:8000"),
            response_body_msg(TEXT_SSE),
        ],
        config={"max_endpoints": 2, "send_prompt": False},
        pick=TWO,
    ),
    Case(
        "classifier_routes_and_cache_fill",
        lambda: [
            rid("/v1/chat/completions", {"authorization": "Bearer sk-1", "x-tenant-id": "t1"}),
            body_msg(chat("auto", stream=True, temperature=0, stop=["\n"], max_tokens=9)),
            response_headers_msg(200, served="10.0.0.1:8000", content_type="text/event-stream"),
            response_body_msg(CHAT_SSE),
        ],
        config=CLASSIFIER_ON,
        classify=CLASSIFIED,
        pick=OK,
    ),
    Case(
        "classifier_replaces_system_prompt_upstream_error",
        lambda: [
            rid("/v1/chat/completions"),
            body_msg(
                json.dumps(
                    {
                        "model": "auto",
                        "messages": [
                            {"role": "system", "content": "client rules"},
                            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                        ],
                    }
                ).encode()
            ),
            response_headers_msg(500),
            response_body_msg(b'{"error": {"message": "boom"}}'),
        ],
        config=CLASSIFIER_ON,
        classify=ClassifyReply(
            model="m2", system_prompt="Ours.", system_prompt_mode="replace", cache_store="tok-2"
        ),
        pick=OK,
    ),
    Case(
        "classifier_blocks",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        config=CLASSIFIER_ON,
        classify=ClassifyReply(
            model="m1",
            block=Block(message="prompt blocked", code="jailbreak_detected", reason="jailbreak"),
            headers={"x-pointsman-category": "other"},
        ),
    ),
    Case(
        "classifier_prerendered_answer",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        config=CLASSIFIER_ON,
        classify=ClassifyReply(
            model="m1",
            answer=ImmediateAnswer(body=b'{"prerendered": true}'),
            headers=dict(CACHE_HEADERS),
        ),
    ),
    Case(
        "cache_hit_chat_json",
        lambda: [rid("/v1/chat/completions"), body_msg(chat(temperature=0))],
        config=CLASSIFIER_ON,
        classify=cache_hit(),
    ),
    Case(
        "cache_hit_chat_sse_usage",
        lambda: [
            rid("/v1/chat/completions"),
            body_msg(chat(stream=True, stream_options={"include_usage": True})),
        ],
        config=CLASSIFIER_ON,
        classify=cache_hit(),
    ),
    Case(
        "cache_hit_completion_json",
        lambda: [rid("/v1/completions"), body_msg(completion())],
        config=CLASSIFIER_ON,
        classify=cache_hit(),
    ),
    Case(
        "cache_hit_completion_sse",
        lambda: [rid("/v1/completions"), body_msg(completion(stream=True))],
        config=CLASSIFIER_ON,
        classify=cache_hit(),
    ),
    Case(
        "classifier_timeout_fail_open_auto",
        lambda: [rid("/v1/chat/completions"), body_msg(chat("auto"))],
        config={**SELECT_ONLY, "default_model": "m1"},
        classify=BusUnavailable("classifier", "timeout"),
        pick=OK,
    ),
    Case(
        "classifier_fail_open_auto_without_default",
        lambda: [rid("/v1/chat/completions"), body_msg(chat("MoM"))],
        config=SELECT_ONLY,
        classify=BusUnavailable("classifier", "no_responders"),
    ),
    Case(
        "classifier_timeout_no_safety_verdict",
        lambda: [rid("/v1/chat/completions"), body_msg(chat("auto"))],
        config={**CLASSIFIER_ON, "default_model": "m1"},
        classify=BusUnavailable("classifier", "timeout"),
    ),
    Case(
        "classifier_overloaded_no_safety_verdict_messages",
        lambda: [
            rid("/v1/messages"),
            body_msg(
                json.dumps(
                    {
                        "model": "m1",
                        "max_tokens": 9,
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                ).encode()
            ),
        ],
        config=CLASSIFIER_ON,
        classify=ClassifyReply(model="m1", error="overloaded"),
    ),
    Case(
        "classifier_overloaded_fail_closed",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        config=CLASSIFIER_CLOSED,
        classify=ClassifyReply(model="m1", error="overloaded"),
    ),
    Case(
        "auto_without_classifier_or_default",
        lambda: [rid("/v1/chat/completions"), body_msg(chat("auto"))],
    ),
    Case(
        "pick_unknown_model",
        lambda: [rid("/v1/chat/completions"), body_msg(chat("nope"))],
        pick=PickReply(status=PickStatus.UNKNOWN_MODEL),
    ),
    Case(
        "pick_no_endpoints",
        lambda: [rid("/v1/completions"), body_msg(completion())],
        config={"failure_mode": "fail-closed"},
        pick=PickReply(status=PickStatus.NO_ENDPOINTS, reason="all endpoints stale"),
    ),
    Case(
        "pick_no_endpoints_fail_open",
        lambda: [rid("/v1/completions"), body_msg(completion())],
        pick=PickReply(status=PickStatus.NO_ENDPOINTS, reason="all endpoints unhealthy"),
    ),
    Case(
        "pick_raises_internal_error",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        pick=RuntimeError("a bug in a bus call"),
    ),
    Case(
        "messages_pick_raises_internal_error",
        lambda: [
            rid("/v1/messages"),
            body_msg(
                json.dumps(
                    {
                        "model": "m1",
                        "max_tokens": 9,
                        "messages": [{"role": "user", "content": "hi"}],
                    }
                ).encode()
            ),
        ],
        pick=RuntimeError("a bug in a bus call"),
    ),
    Case(
        "pick_too_large_for_bus",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        pick=BusTooLarge("picker", 2_000_000, 1_048_576),
    ),
    Case(
        "pick_shed",
        lambda: [rid("/v1/chat/completions", {"x-pointsman-priority": "-1"}), body_msg(chat())],
        pick=PickReply(status=PickStatus.SHED, reason="kv_cache"),
    ),
    Case(
        "pick_timeout_fail_open",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        pick=BusUnavailable("picker", "timeout"),
    ),
    Case(
        "pick_disconnected_fail_closed",
        lambda: [rid("/v1/chat/completions"), body_msg(chat())],
        config={"failure_mode": "fail-closed"},
        pick=BusUnavailable("picker", "disconnected"),
    ),
    Case(
        "models_list",
        lambda: [rid("/v1/models?limit=5", method="GET", eos=True)],
        config=CLASSIFIER_ON,
        models=ModelsReply(
            pools=[
                PoolInfo(name="zeta", endpoints=2, healthy=2, created=1_600_000_000),
                PoolInfo(name="alpha", endpoints=1, healthy=0),
            ]
        ),
    ),
    Case(
        "models_fail_open",
        lambda: [rid("/v1/models", method="GET", eos=True)],
        models=BusUnavailable("picker", "no_responders"),
    ),
    Case(
        "models_fail_closed",
        lambda: [rid("/v1/models/", method="GET", eos=True)],
        config={"failure_mode": "fail-closed"},
        models=BusUnavailable("picker", "timeout"),
    ),
    Case(
        "passthrough_other_path",
        lambda: [rid("/v1/embeddings", {"x-selected-model": "forged"}), body_msg(b"{}")],
    ),
    Case("passthrough_get_chat", lambda: [rid("/v1/chat/completions", method="GET", eos=True)]),
    Case("empty_body", lambda: [rid("/v1/chat/completions", eos=True)]),
    Case("invalid_json", lambda: [rid("/v1/chat/completions"), body_msg(b"{nope")]),
    Case("invalid_utf8", lambda: [rid("/v1/chat/completions"), body_msg(b'{"a": "\xff"}')]),
    Case("body_not_object", lambda: [rid("/v1/completions"), body_msg(b"[1]")]),
    Case(
        "missing_messages",
        lambda: [rid("/v1/chat/completions"), body_msg(b'{"model": "m1"}')],
    ),
    Case(
        "invalid_prompt",
        lambda: [rid("/v1/completions"), body_msg(b'{"model": "m1", "prompt": [1, "a"]}')],
    ),
    Case(
        "invalid_stream",
        lambda: [rid("/v1/chat/completions"), body_msg(chat(stream="yes"))],
    ),
    Case(
        "body_too_large_streamed",
        lambda: [
            rid("/v1/chat/completions"),
            body_msg(chat()[:40], eos=False),
            body_msg(chat()[40:]),
        ],
        config={"max_body_bytes": 50},
    ),
    Case(
        "trailers_continue",
        lambda: [
            rid("/v1/chat/completions"),
            body_msg(chat()),
            pb.ProcessingRequest(request_trailers=pb.HttpTrailers()),
            response_headers_msg(200),
            pb.ProcessingRequest(response_trailers=pb.HttpTrailers()),
        ],
        pick=OK,
    ),
    Case(
        "observer_stream_publishes",
        lambda: [
            observed(rid("/v1/chat/completions"), CONTEXT),
            observed(
                served_by(
                    response_headers_msg(200, content_type="text/event-stream"), "10.0.0.1:8000"
                ),
                CONTEXT,
            ),
            observed(response_body_msg(CHAT_SSE), CONTEXT),
        ],
    ),
    Case(
        "observer_stream_client_gone",
        lambda: [observed(rid("/v1/chat/completions"), CONTEXT)],
    ),
    Case(
        "observer_stream_not_routed",
        lambda: [
            observed(response_headers_msg(200), {}),
            observed(response_body_msg(b"{}"), {}),
        ],
    ),
]


# -- the Responses and Messages APIs ----------------------------------------------------------

NO_STORE = {"responses": {"redis_url": ""}}
TRANSLATE = {"apis": {"responses": "chat", "messages": "chat"}, **NO_STORE}


def messages(model: str = "m1", **fields: Any) -> bytes:
    body = {
        "model": model,
        "max_tokens": 16,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        **fields,
    }
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def responses(model: str = "m1", **fields: Any) -> bytes:
    return json.dumps({"model": model, "input": "What is 2+2?", **fields}).encode()


def observer_layout(request: pb.ProcessingRequest) -> pb.ProcessingRequest:
    """Pointsman's own Envoy layout: the decision filter is sent no response (body mode NONE)."""
    return modes(request, ProcessingMode.BUFFERED, ProcessingMode.NONE)


API_CASES = [
    Case(
        "messages_translated_sse_observer",
        lambda: [
            observer_layout(rid("/v1/messages", {"authorization": "Bearer sk-1"})),
            body_msg(messages(stream=True)),
            response_headers_msg(200, served="10.0.0.1:8000", content_type="text/event-stream"),
            response_body_msg(CHAT_SSE[:90], eos=False),
            response_body_msg(CHAT_SSE[90:]),
        ],
        config=NO_STORE,
        pick=OK,
    ),
    Case(
        "messages_native_error_observer",
        lambda: [
            observer_layout(rid("/v1/messages")),
            body_msg(messages()),
            response_headers_msg(404),
            response_body_msg(b'{"error": {"message": "no such model", "type": "NotFoundError"}}'),
        ],
        config={"apis": {"pools": {"m1": {"messages": "native"}}}},
        pick=OK,
    ),
    Case(
        "messages_full_duplex_observer_translation_unavailable",
        lambda: [
            modes(rid("/v1/messages"), ProcessingMode.FULL_DUPLEX_STREAMED, ProcessingMode.NONE),
            body_msg(messages()),
        ],
    ),
    Case(
        "messages_bad_block",
        lambda: [
            rid("/v1/messages"),
            body_msg(messages(messages=[{"role": "user", "content": [{"type": "video"}]}])),
        ],
    ),
    Case(
        "messages_count_tokens_auto_without_classifier_call",
        lambda: [
            rid("/v1/messages/count_tokens"),
            body_msg(messages("auto", max_tokens=None)),
            response_headers_msg(200),
            response_body_msg(JSON_ANSWER),
        ],
        config={**CLASSIFIER_ON, "default_model": "m1"},
        pick=OK,
    ),
    Case(
        "responses_translated_json_inline",
        lambda: [
            rid("/v1/responses"),
            body_msg(responses(instructions="Be brief.", max_output_tokens=9)),
            response_headers_msg(200, served="10.0.0.1:8000"),
            response_body_msg(JSON_ANSWER),
        ],
        config=TRANSLATE,
        pick=OK,
    ),
    Case(
        "responses_native_stateless_observer",
        lambda: [
            observer_layout(rid("/v1/responses", {"x-session-id": "s-9"})),
            body_msg(responses(store=True)),
        ],
        config=NO_STORE,
        pick=OK,
    ),
    Case(
        "responses_get_without_store",
        lambda: [rid("/v1/responses/resp_abc", method="GET", eos=True)],
        config=NO_STORE,
    ),
    Case(
        "responses_previous_without_store",
        lambda: [rid("/v1/responses"), body_msg(responses(previous_response_id="resp_abc"))],
        config=NO_STORE,
    ),
]
CASES += API_CASES


async def exchange(case: Case) -> str:
    """The whole exchange of one case, as the text its pinned file holds."""
    log: list[str] = [f"# pinned ext_proc exchange '{case.name}' (see {Path(__file__).name})"]
    if case.config:
        log.append("## shim config\n" + json.dumps(case.config, sort_keys=True))

    def on_call(call: str, message: msgspec.Struct | None) -> None:
        log.append(f"## shim -> bus: {call}\n" + (_json(message) if message else "{}"))

    bus = ScriptedBus(classify=case.classify, pick=case.pick, models=case.models, on_call=on_call)
    processor = Processor(
        ShimConfig(**case.config),
        bus,  # type: ignore[arg-type]
        clock=lambda: NOW,
        new_id=lambda: NEW_ID,
        # Debug output and the endpoint report allowed (both off by default; test_policy).
        debug_config=DebugConfig(enabled=True, report_endpoint=True),
    )

    async def feed() -> AsyncIterator[pb.ProcessingRequest]:
        for message in case.messages():
            log.append("## envoy -> shim\n" + _text(message))
            yield message

    before = _counters()
    async for response in processor.process(feed()):
        log.append("## shim -> envoy\n" + _text(response))
    after = _counters()
    changed = [
        f"{k} +{after[k] - before.get(k, 0):g}"
        for k in sorted(after)
        if after[k] != before.get(k, 0)
    ]
    log.append("## counters\n" + "\n".join(changed))
    return "\n".join(log) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_pinned_exchange(case: Case) -> None:
    got = await exchange(case)
    path = PINNED / f"{case.name}.txt"
    if os.environ.get("PINNED_UPDATE") == "1":
        PINNED.mkdir(exist_ok=True)
        path.write_text(got)
    assert got == path.read_text()


def test_every_pinned_file_has_a_case() -> None:
    assert sorted(p.stem for p in PINNED.glob("*.txt")) == sorted(c.name for c in CASES)


@pytest.mark.parametrize("name", ["observer_stream_publishes", "observer_stream_not_routed"])
async def test_an_observer_stream_ends_when_there_is_nothing_more_to_observe(name: str) -> None:
    """The shim closes an observer stream itself once the response has ended (or the request
    is not one it routed), while Envoy keeps its end open: Envoy would reset it after
    deferred_close_timeout, and each reset stream leaks native memory in grpcio's asyncio
    server (docs/reliability.md, soak)."""
    case = next(c for c in CASES if c.name == name)
    bus = ScriptedBus(classify=case.classify, pick=case.pick, models=case.models)
    processor = Processor(
        ShimConfig(**case.config),
        bus,  # type: ignore[arg-type]
        clock=lambda: NOW,
        new_id=lambda: NEW_ID,
    )
    envoy_gone = asyncio.Event()

    async def feed() -> AsyncIterator[pb.ProcessingRequest]:
        for message in case.messages():
            yield message
        await envoy_gone.wait()  # Envoy never half-closes

    async def drain() -> None:
        async for _ in processor.process(feed()):
            pass

    try:
        await asyncio.wait_for(drain(), 30)
    finally:
        envoy_gone.set()
