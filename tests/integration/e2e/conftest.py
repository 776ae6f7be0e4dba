"""Whole-stack fixtures: real nats-server, collector, picker, shim, Envoy and simulators."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import nats
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pointsman.stack import Stack, StackOptions
from pointsman.v1 import CompletionEvent, PoolSnapshot, decode, subjects

#: Fast simulators: every simulated duration x0.02, short default outputs.
SIM_ARGS = ["--time-scale", "0.02", "--max-num-seqs", "4"]


def make_stack(**options: object) -> Stack:
    defaults: dict[str, object] = {
        "models": ["alpha", "beta"],
        "replicas": 2,
        "gateway_port": 0,
        "sim_args": SIM_ARGS,
        "overrides": {"shim": {"pick_timeout_ms": 300}},
    }
    defaults.update(options)
    # These tests read the serving replica from x-pointsman-endpoint (off by default).
    overrides = dict(defaults["overrides"])  # type: ignore[call-overload]
    overrides["debug"] = {"report_endpoint": True, **overrides.get("debug", {})}
    defaults["overrides"] = overrides
    return Stack(StackOptions(**defaults))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    """BUFFERED body mode, fail-open."""
    with make_stack() as s:
        yield s


def published_twice(stack: Stack, model: str, endpoint: str, min_waiting: int) -> None:
    """Wait (60 s at most) for two snapshots of ``model`` on the bus in which ``endpoint``
    has at least ``min_waiting`` requests waiting."""

    async def run() -> None:
        nc = await nats.connect(**stack.nats_config("picker").connect_options("picker"))
        try:
            sub = await nc.subscribe(subjects.metrics(model))
            seen = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while seen < 2:
                left = deadline - loop.time()
                assert left > 0, f"no snapshot showed {min_waiting} waiting at {endpoint}"
                snap = decode((await sub.next_msg(timeout=left)).data, PoolSnapshot)
                if any(e.address == endpoint and e.waiting >= min_waiting for e in snap.endpoints):
                    seen += 1
        finally:
            await nc.close()

    asyncio.run(run())


def waiting(endpoint: str) -> float:
    """The engine's own ``vllm:num_requests_waiting``, read from its /metrics."""
    text = httpx.get(f"http://{endpoint}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("vllm:num_requests_waiting{"))
    return float(line.rsplit(" ", 1)[1])


@contextlib.contextmanager
def queue_filled(
    endpoint: str, model: str, *, requests: int, min_waiting: int, stack: Stack | None = None
) -> Iterator[None]:
    """Long generations sent straight to one replica (not through the gateway) until its
    waiting queue holds ``min_waiting``; the block runs while they are queued. With ``stack``,
    the block starts once the collector has published that queue twice (the picker has had
    the first snapshot a whole interval by then), not after a guessed delay."""

    def long_request() -> None:
        with httpx.Client(timeout=120) as c:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "hello"}],
                "max_tokens": 4000,
            }
            c.post(f"http://{endpoint}/v1/chat/completions", json=body)

    threads = [threading.Thread(target=long_request) for _ in range(requests)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 60
        while waiting(endpoint) < min_waiting:
            assert time.monotonic() < deadline, f"{endpoint} never queued {min_waiting} requests"
            time.sleep(0.05)
        if stack is not None:
            published_twice(stack, model, endpoint, min_waiting)
        else:
            time.sleep(0.3)  # the collector's next snapshot reaches the picker
        yield
    finally:
        for t in threads:
            t.join()


def post_and_collect_completions(
    stack: Stack, requests: list[tuple[dict[str, object], dict[str, str]]], prefix: str
) -> tuple[list[CompletionEvent], list[httpx.Response]]:
    """POST each ``(body, headers)`` to the chat path, in order, and return the responses with
    every completion event whose request id starts with ``prefix``: it waits until there is one
    per request, then a second more, so that a duplicate event shows too."""

    async def run() -> tuple[list[CompletionEvent], list[httpx.Response]]:
        # As a picker: the identity that may read completion events (the bus is authenticated).
        nc = await nats.connect(**stack.nats_config("picker").connect_options("picker"))
        sub = await nc.subscribe(subjects.COMPLETIONS)
        await nc.flush()
        async with httpx.AsyncClient() as client:
            responses = [
                await client.post(
                    f"{stack.gateway_url}/v1/chat/completions", json=body, headers=headers
                )
                for body, headers in requests
            ]
        events: list[CompletionEvent] = []

        def ours() -> list[CompletionEvent]:
            return [e for e in events if e.request_id.startswith(prefix)]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(ours()) < len(requests):
            msg = await sub.next_msg(timeout=max(0.1, deadline - loop.time()))
            events.append(decode(msg.data, CompletionEvent))
        with contextlib.suppress(nats.errors.TimeoutError):
            while True:
                events.append(decode((await sub.next_msg(timeout=1.0)).data, CompletionEvent))
        await nc.close()
        return ours(), responses

    return asyncio.run(run())


def shim_streams(stack: Stack) -> dict[str, float]:
    """The shim's open ext_proc streams (``active``) and those Envoy reset, by kind."""
    text = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics", timeout=10).text
    out = {"active": 0.0, "decision": 0.0, "observer": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "pointsman_shim_active_streams":
                out["active"] = s.value
            elif s.name == "pointsman_shim_streams_reset_total":
                out[s.labels["stream"]] = s.value
    return out


def streams_reset_by(stack: Stack, send: Callable[[], None]) -> dict[str, float]:
    """The ext_proc streams Envoy reset while ``send`` ran, by kind, once every stream it
    opened has ended (waits for no open stream, 60 s at most: Envoy keeps none between
    requests)."""
    before = shim_streams(stack)
    send()
    deadline = time.monotonic() + 60
    while (now := shim_streams(stack))["active"] > 0:
        assert time.monotonic() < deadline, f"ext_proc streams still open: {now}"
        time.sleep(0.05)
    return {k: now[k] - before[k] for k in ("decision", "observer")}


def mixed_requests(stack: Stack, n: int = 6) -> None:
    """Plain and streamed chat completions to both pools, and Messages API requests (the
    decision stream translates their answers back), to every pool, all answered 200."""
    models = list(stack.pools)
    with httpx.Client(timeout=60) as client:
        for i in range(n):
            model = models[i % len(models)]
            stream = i % 3 == 2
            chat = {
                "model": model,
                "messages": [{"role": "user", "content": f"stream hygiene {i}"}],
                "max_tokens": 6,
                "stream": stream,
            }
            r = client.post(f"{stack.gateway_url}/v1/chat/completions", json=chat)
            assert r.status_code == 200, r.text
            messages = {**chat, "messages": [{"role": "user", "content": f"messages {i}"}]}
            r = client.post(f"{stack.gateway_url}/v1/messages", json=messages)
            assert r.status_code == 200, r.text
