"""The shim's ext_proc protocol, message by message, against a real picker over a real NATS.

Envoy is left out on purpose: these tests send exactly the messages the endpoint-picker protocol
describes (subset hints, served-endpoint metadata, odd orders) and read exactly what comes back.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from pointsman.bus import NatsConfig
from pointsman.debug import DebugConfig
from pointsman.v1 import CompletionEvent, EndpointMetrics, PoolSnapshot, decode, encode, subjects
from pointsman_shim.bus import Bus
from pointsman_shim.config import ShimConfig
from pointsman_shim.handlers import Processor
from tests.helpers import procs
from tests.helpers.extproc import (
    body_msg,
    headers_msg,
    response_body_msg,
    response_headers_msg,
    run,
    set_headers,
)

pytestmark = pytest.mark.integration

POOL = "proto-model"


@pytest.fixture(scope="module")
def picker(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    port = procs.free_port()
    path: Path = tmp_path_factory.mktemp("picker") / "picker.yaml"
    path.write_text(
        yaml.safe_dump({"nats": {"url": nats_url}, "picker": {"http_port": port, "warmup_ms": 0}})
    )
    proc = procs.spawn("picker", [sys.executable, "-m", "pointsman_picker", "--config", str(path)])
    try:
        procs.wait_until(
            lambda: procs.http_ok(f"http://127.0.0.1:{port}/readyz"), 30, "picker", proc
        )
        yield
    finally:
        proc.stop()


async def publish_snapshot(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    now = time.time()
    snap = PoolSnapshot(
        pool=POOL,
        collector="test",
        published_at=now,
        endpoints=[
            EndpointMetrics(address="10.0.0.1:8000", scraped_at=now, waiting=0),
            EndpointMetrics(address="10.0.0.2:8000", scraped_at=now, waiting=3),
            EndpointMetrics(address="10.0.0.3:8000", scraped_at=now, waiting=9),
        ],
    )
    await nc.publish(subjects.metrics(POOL), encode(snap))
    await nc.drain()


CHAT = json.dumps({"model": POOL, "messages": [{"role": "user", "content": "hi"}]}).encode()


async def make_processor(nats_url: str, **config: Any) -> Processor:
    bus = Bus(NatsConfig(url=nats_url))
    await bus.start()
    await publish_snapshot(nats_url)
    processor = Processor(
        ShimConfig(pick_timeout_ms=1000, **config),
        bus,
        debug_config=DebugConfig(report_endpoint=True),
    )
    # wait until the picker has the pool
    deadline = time.monotonic() + 60
    while True:
        out = await run(processor, [headers_msg("/v1/chat/completions"), body_msg(CHAT)])
        if not out[-1].HasField("immediate_response"):
            return processor
        assert time.monotonic() < deadline, out[-1]
        await asyncio.sleep(0.05)


async def test_endpoint_picker_protocol(nats_url: str, picker: None) -> None:
    processor = await make_processor(nats_url, max_endpoints=3)
    nc = await nats.connect(nats_url)
    events: asyncio.Queue[CompletionEvent] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(decode(msg.data, CompletionEvent))

    await nc.subscribe(subjects.COMPLETIONS, cb=on_event)
    await nc.flush()
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    out = await run(
        processor,
        [
            headers_msg(
                "/v1/chat/completions",
                {"x-gateway-destination-endpoint": "6.6.6.6:1", "x-request-id": "req-1"},
                subset=["10.0.0.2:8000", "10.0.0.3:8000"],
            ),
            body_msg(CHAT),
            response_headers_msg(200, served="10.0.0.3:8000"),
            response_body_msg(json.dumps({"choices": [], "usage": usage}).encode()),
        ],
    )
    headers_resp, body_resp, resp_headers, resp_body = out
    assert (
        "x-gateway-destination-endpoint"
        in headers_resp.request_headers.response.header_mutation.remove_headers
    )
    common = body_resp.request_body.response
    routed = set_headers(common)
    # the subset hint is honoured, best first; header and metadata carry the same comma list
    assert routed["x-gateway-destination-endpoint"] == "10.0.0.2:8000,10.0.0.3:8000"
    lb = body_resp.dynamic_metadata.fields["envoy.lb"].struct_value.fields
    assert (
        lb["x-gateway-destination-endpoint"].string_value
        == routed["x-gateway-destination-endpoint"]
    )
    assert common.clear_route_cache
    assert "content-length" not in routed  # body untouched in BUFFERED mode
    assert not common.HasField("body_mutation")
    # the response reports where the gateway really sent it (a retry moved it to the fallback)
    reported = set_headers(resp_headers.response_headers.response)
    assert reported["x-pointsman-endpoint"] == "10.0.0.3:8000"
    assert reported["x-selected-model"] == POOL
    assert resp_body.HasField("response_body")
    event = await asyncio.wait_for(events.get(), 5)
    assert (event.request_id, event.endpoint, event.status_code) == ("req-1", "10.0.0.3:8000", 200)
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (3, 2, 5)
    await nc.drain()
    await processor.bus.close()


async def test_decision_and_observer_streams_split_the_work(nats_url: str, picker: None) -> None:
    """Pointsman's Envoy config: the decision stream never sees the response; an observer stream
    (``observability_mode``, maybe on another replica) gets the decision as metadata, is never
    answered, and publishes the completion."""
    processor = await make_processor(nats_url, max_endpoints=2)
    nc = await nats.connect(nats_url)
    events: asyncio.Queue[CompletionEvent] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        await events.put(decode(msg.data, CompletionEvent))

    await nc.subscribe(subjects.COMPLETIONS, cb=on_event)
    await nc.flush()

    first = headers_msg("/v1/chat/completions", {"x-request-id": "req-obs"})
    first.protocol_config.request_body_mode = ProcessingMode.BUFFERED
    first.protocol_config.response_body_mode = ProcessingMode.NONE
    stream_chat = json.dumps(
        {"model": POOL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    out = await run(processor, [first, body_msg(stream_chat)])
    assert len(out) == 2
    context = out[1].dynamic_metadata.fields["pointsman"].struct_value
    routed = set_headers(out[1].request_body.response)
    with pytest.raises(asyncio.TimeoutError):  # the decision alone is no completion
        await asyncio.wait_for(events.get(), 0.3)

    # a second processor = another shim replica: everything it needs is in the metadata
    other = Processor(ShimConfig(pick_timeout_ms=1000), processor.bus)
    observed_headers = headers_msg("/v1/chat/completions", routed)
    observed_response = response_headers_msg(200, content_type="text/event-stream")
    observed_response.attributes["envoy.filters.http.ext_proc"].update(
        {"upstream.address": "10.0.0.2:8000"}
    )
    chunk = {
        "choices": [],
        "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10},
    }
    sse = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    observed_body = response_body_msg(sse)
    for m in (observed_headers, observed_response, observed_body):
        m.observability_mode = True
        m.metadata_context.filter_metadata["pointsman"].CopyFrom(context)
    assert await run(other, [observed_headers, observed_response, observed_body]) == []
    event = await asyncio.wait_for(events.get(), 5)
    assert (event.request_id, event.model, event.endpoint) == ("req-obs", POOL, "10.0.0.2:8000")
    assert event.stream and event.status_code == 200
    assert (event.prompt_tokens, event.completion_tokens) == (4, 6)

    # an observed request the shim did not route (no metadata) is ignored, and says so nowhere
    stray = response_headers_msg(200)
    stray.observability_mode = True
    assert await run(other, [stray, response_body_msg(b"{}")]) == []
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(events.get(), 0.3)

    # the client went away before the response: the observer still closes the in-flight count
    gone = headers_msg("/v1/chat/completions", routed)
    gone.observability_mode = True
    gone.metadata_context.filter_metadata["pointsman"].CopyFrom(context)
    assert await run(other, [gone]) == []
    event = await asyncio.wait_for(events.get(), 5)
    assert (event.request_id, event.status_code) == ("req-obs", 0)
    await nc.drain()
    await processor.bus.close()


async def test_full_duplex_holds_headers_and_streams_body_back(nats_url: str, picker: None) -> None:
    processor = await make_processor(nats_url, body_mode="FULL_DUPLEX_STREAMED")
    auto = json.dumps(
        {"model": "auto", "messages": [{"role": "user", "content": "x" * 100}]}
    ).encode()
    processor.config = processor.config.model_copy(update={"default_model": POOL})
    out = await run(
        processor,
        [
            headers_msg("/v1/chat/completions"),
            body_msg(auto[:40], eos=False),
            body_msg(auto[40:], eos=True),
        ],
    )
    assert len(out) == 2, "nothing is answered before the body is complete"
    headers_resp, body_resp = out
    routed = set_headers(headers_resp.request_headers.response)
    streamed = body_resp.request_body.response.body_mutation.streamed_response
    assert streamed.end_of_stream
    new_body = json.loads(streamed.body)
    assert new_body["model"] == POOL
    assert routed["content-length"] == str(len(streamed.body))
    # primary and fallback: shim.max_endpoints defaults to 2
    assert routed["x-gateway-destination-endpoint"] == "10.0.0.1:8000,10.0.0.2:8000"
    assert routed["x-pointsman-route"] == "default-model"
    await processor.bus.close()


@pytest.mark.parametrize(
    "messages",
    [
        [body_msg(CHAT)],  # body without headers
        [response_headers_msg(200), response_body_msg(b"{}")],  # response without request
        [headers_msg("/v1/chat/completions"), body_msg(b"\x00\xff" * 50)],
        [headers_msg("/v1/chat/completions"), body_msg(CHAT, eos=False)],  # stream ends early
        [headers_msg("/v1/chat/completions", eos=True)],
        [
            headers_msg("/v1/chat/completions"),
            body_msg(CHAT),
            response_body_msg(b"data: {\n\n", eos=True),
        ],
        [headers_msg("/v1/embeddings"), body_msg(b"{}"), response_headers_msg(200)],
        [pb.ProcessingRequest()],
    ],
)
async def test_odd_message_orders_never_crash(
    nats_url: str, picker: None, messages: list[pb.ProcessingRequest]
) -> None:
    processor = await make_processor(nats_url)
    out = await asyncio.wait_for(run(processor, messages), 10)
    assert len(out) <= len(messages) + 1
    await processor.bus.close()


async def test_body_over_the_bus_limit_is_413_never_sent_unchecked(
    nats_url: str, picker: None
) -> None:
    """Issue 12: a body between NATS's max_payload (1 MiB here, the server default) and
    ``max_body_bytes`` (4 MiB) raised in the shim, and Envoy then forwarded it unchecked. The
    generated configs raise max_payload; a server that keeps a smaller one gets a 413."""
    processor = await make_processor(nats_url)
    big = json.dumps(
        {"model": POOL, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    ).encode()
    assert processor.bus.max_payload < len(big) < processor.config.max_body_bytes
    out = await asyncio.wait_for(
        run(processor, [headers_msg("/v1/chat/completions"), body_msg(big)]), 10
    )
    answer = out[-1].immediate_response
    assert answer.status.code == 413
    error = json.loads(answer.body)["error"]
    assert error["code"] == "body_too_large_for_bus" and error["type"] == "invalid_request_error"
    await processor.bus.close()


async def test_no_safety_verdict_is_a_503_unless_the_classifier_only_selects(
    nats_url: str, picker: None
) -> None:
    """Issue 12: the classifier is enabled but nothing answers on the bus (no_responders). By
    default the classifier blocks jailbreaks, so the request gets 503 with Retry-After instead
    of going upstream unchecked; a classifier that only selects models fails open."""
    processor = await make_processor(nats_url)  # routes once the picker has the pool
    checked = Processor(
        ShimConfig(pick_timeout_ms=1000, classifier={"enabled": True}), processor.bus
    )
    out = await asyncio.wait_for(
        run(checked, [headers_msg("/v1/chat/completions"), body_msg(CHAT)]), 10
    )
    answer = out[-1].immediate_response
    assert answer.status.code == 503
    headers = {h.header.key: h.header.raw_value.decode() for h in answer.headers.set_headers}
    assert headers["retry-after"] == "1"
    assert json.loads(answer.body)["error"]["code"] == "service_unavailable"
    assert answer.details == "safety_unavailable"

    selecting = Processor(
        ShimConfig(pick_timeout_ms=1000, classifier={"enabled": True, "safety_blocks": False}),
        processor.bus,
    )
    out = await asyncio.wait_for(
        run(selecting, [headers_msg("/v1/chat/completions"), body_msg(CHAT)]), 10
    )
    assert not out[-1].HasField("immediate_response")
    assert set_headers(out[-1].request_body.response)["x-pointsman-classifier"] == "fail-open"
    await processor.bus.close()
