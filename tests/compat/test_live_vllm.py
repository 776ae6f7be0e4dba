"""The whole Pointsman stack in front of REAL vLLM (CPU build, tiny random Llama).

Skipped unless ``POINTSMAN_VLLM_PYTHON`` names a Python with vLLM installed (see
``tests/fixtures/vllm-0.32/README.md`` for the install)::

    POINTSMAN_VLLM_PYTHON=/work/vllm-venv/bin/python .venv/bin/pytest tests/compat/test_live_vllm.py

vLLM takes one to four minutes to start on two busy cores; the tests share one server and one
stack. The Responses API and /tokenize go to vLLM (through the gateway once it serves them:
today it answers 404 to any path outside its API, src/pointsman/stack/gateway.py); their answers
are compared with the simulator's answers to the same requests (status, keys and value types,
event order), so the simulator is checked against the live server, not only against the captures.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from pointsman.stack import Stack, StackOptions
from pointsman.stack.gateway import GatewayConfig
from pointsman.stack.procs import free_port
from pointsman_collector.config import CollectorConfig
from tests.compat import capture_vllm
from tests.compat.fixtures import typed_events
from tests.compat.test_compat_sim_apis import shape, typed_paths
from tests.helpers import procs

VLLM_PYTHON = os.environ.get("POINTSMAN_VLLM_PYTHON", "")
MODEL = capture_vllm.MODEL_NAME
CHAT = "/v1/chat/completions"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not VLLM_PYTHON, reason="POINTSMAN_VLLM_PYTHON is not set"),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Real vLLM serving the tiny Llama on a free port; yields ``host:port``."""
    work = tmp_path_factory.mktemp("vllm")
    model = work / "tiny-llama"
    build = Path(capture_vllm.HERE) / "build_tiny_llama.py"
    env = capture_vllm.vllm_env(work / "cache")
    subprocess.run([VLLM_PYTHON, str(build), str(model)], check=True, env=env, timeout=300)
    port = free_port()
    proc = procs.spawn("vllm", capture_vllm.vllm_argv(VLLM_PYTHON, model, port), env=env)
    try:
        url = f"http://127.0.0.1:{port}/health"
        procs.wait_until(lambda: procs.http_ok(url), 600, "vLLM", proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.stop(30)  # its process group: the engine core outlives a killed API server


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    """The simulator configured like the live server (model name, context length)."""
    port = free_port()
    argv = [sys.executable, "-m", "pointsman.sim", "--port", str(port), "--model", MODEL]
    argv += ["--max-model-len", "512", "--time-scale", "0.01", "--log-level", "WARNING"]
    proc = procs.spawn("sim", argv)
    try:
        procs.wait_until(lambda: procs.http_ok(f"http://127.0.0.1:{port}/health"), 60, "sim", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def stack(vllm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    config = work / "pointsman.yaml"
    config.write_text(
        yaml.safe_dump({"pools": {MODEL: [vllm]}, "debug": {"report_endpoint": True}})
    )
    options = StackOptions(
        simulate=False, config=config, gateway_port=0, workdir=work, ready_timeout=120
    )
    with Stack(options) as s:
        yield s


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url, timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen within {timeout:.0f}s: {what}")
        time.sleep(0.1)


def test_gateway_lists_the_real_model(stack: Stack) -> None:
    assert MODEL in {m["id"] for m in stack.models()["data"]}


def test_chat_completion_is_routed_to_vllm(stack: Stack, vllm: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}
    r = httpx.post(stack.gateway_url + CHAT, json=body, timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == MODEL
    assert data["system_fingerprint"].startswith("vllm-")
    assert data["usage"]["completion_tokens"] == 6
    assert r.headers["x-pointsman-endpoint"] == vllm
    assert r.headers["x-pointsman-route"] == "picked"


def test_collector_and_picker_see_the_endpoint(stack: Stack, vllm: str) -> None:
    collector = f"http://127.0.0.1:{stack.ports['collector_http']}/metrics"
    picker = f"http://127.0.0.1:{stack.ports['picker_http']}/metrics"
    eventually(
        lambda: metric(collector, "pointsman_collector_scrapes_total", result="ok") > 0,
        "collector scrapes of real vLLM succeed",
    )
    assert metric(collector, "pointsman_collector_scrapes_total", result="parse_error") == 0
    eventually(
        lambda: metric(picker, "pointsman_picker_snapshots_total", pool=MODEL) > 0,
        "picker receives snapshots of the pool",
    )
    body = {"model": MODEL, "prompt": "the quick brown fox", "max_tokens": 4}
    r = httpx.post(stack.gateway_url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    assert metric(picker, "pointsman_picker_picks_total", pool=MODEL, endpoint=vllm) >= 1


def test_streamed_usage_is_counted_by_the_shim(stack: Stack) -> None:
    shim = f"http://127.0.0.1:{stack.ports['shim_http']}/metrics"

    def tokens() -> float:
        return metric(shim, "pointsman_shim_tokens_total", model=MODEL, kind="completion")

    before = tokens()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", stack.gateway_url + CHAT, json=body, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    usage = json.loads(lines[-2][6:])["usage"]
    eventually(lambda: tokens() - before == usage["completion_tokens"], "shim counts usage")


RESPONSES = "/v1/responses"


def served_by_gateway(path: str) -> bool:
    """Whether the gateway routes ``path`` (src/pointsman/stack/gateway.py); it answers 404 to
    the rest itself, so those are asked of vLLM directly."""
    bare = path.split("?", 1)[0]
    return any(re.fullmatch(r.regex(), bare) for r in GatewayConfig().api_routes())


def both(
    stack: Stack,
    vllm: str,
    sim: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
) -> list[httpx.Response]:
    """The same request to vLLM (through the gateway when it serves the path) and to the
    simulator."""
    real = stack.gateway_url if served_by_gateway(path) else f"http://{vllm}"
    return [httpx.request(method, base + path, json=body, timeout=60) for base in (real, sim)]


def test_gateway_keeps_vllms_other_paths_private(stack: Stack, vllm: str) -> None:
    body = {"model": MODEL, "prompt": "hello"}
    assert httpx.post(f"http://{vllm}/tokenize", json=body, timeout=60).status_code == 200
    r = httpx.post(stack.gateway_url + "/tokenize", json=body, timeout=60)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "unknown_url"


def test_responses_pass_through_to_vllm_as_the_simulator_answers(
    stack: Stack, vllm: str, sim: str
) -> None:
    body = {"model": MODEL, "input": "hello there", "instructions": "be brief",
            "max_output_tokens": 5, "temperature": 0}  # fmt: skip
    real, ours = both(stack, vllm, sim, "POST", RESPONSES, body)
    assert real.status_code == ours.status_code == 200, real.text
    answer = real.json()
    assert answer["object"] == "response" and answer["model"] == MODEL
    assert 0 < answer["usage"]["output_tokens"] <= 5
    assert typed_paths(ours.json()) == typed_paths(answer)
    # vLLM's default keeps nothing (its store is off), nor does the simulator like it ...
    gone = httpx.get(f"{sim}{RESPONSES}/{answer['id']}", timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "response_id"
    # ... but Pointsman keeps the state: GET, and a turn continuing it, which reaches vLLM as a
    # stateless request with the whole conversation (its prompt grows by the first turn)
    kept = httpx.get(f"{stack.gateway_url}{RESPONSES}/{answer['id']}", timeout=60)
    assert kept.status_code == 200 and kept.json()["id"] == answer["id"]
    again = {**body, "input": "and then?", "previous_response_id": answer["id"]}
    turn = httpx.post(stack.gateway_url + RESPONSES, json=again, timeout=60)
    assert turn.status_code == 200, turn.text
    assert turn.json()["usage"]["input_tokens"] > answer["usage"]["input_tokens"]
    missing = {**again, "previous_response_id": "resp_never"}
    unknown = httpx.post(stack.gateway_url + RESPONSES, json=missing, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "previous_response_id"


def test_responses_stream_through_the_gateway_in_vllms_event_order(
    stack: Stack, vllm: str, sim: str
) -> None:
    body = {"model": MODEL, "input": "hello there", "max_output_tokens": 6, "stream": True}
    real, ours = both(stack, vllm, sim, "POST", RESPONSES, body)
    assert real.status_code == ours.status_code == 200
    assert real.headers["content-type"].startswith("text/event-stream")
    assert shape(ours.content) == shape(real.content)
    events = typed_events(real.content)
    final = events[-1][1]["response"]
    text = "".join(d["delta"] for e, d in events if e == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] <= 6


def test_tokenize_passes_through_with_the_simulators_shape(
    stack: Stack, vllm: str, sim: str
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
    real, ours = both(stack, vllm, sim, "POST", "/tokenize", body)
    assert real.status_code == ours.status_code == 200
    assert typed_paths(ours.json()) == typed_paths(real.json())
    assert real.json()["count"] == len(real.json()["tokens"])


MESSAGES = {
    "model": MODEL,
    "max_tokens": 5,
    "system": "be brief",
    "messages": [{"role": "user", "content": "hello there"}],
}


def test_messages_translated_to_vllms_chat_answer_like_vllms_own(stack: Stack, vllm: str) -> None:
    """The default for Messages is ``chat``: the gateway translates to vLLM's chat completions.
    vLLM 0.32 also serves /v1/messages itself: both answers have the same shape."""
    translated = httpx.post(stack.gateway_url + "/v1/messages", json=MESSAGES, timeout=60)
    own = httpx.post(f"http://{vllm}/v1/messages", json=MESSAGES, timeout=60)
    assert translated.status_code == own.status_code == 200, translated.text
    assert set(own.json()) <= set(translated.json())
    assert translated.json()["usage"] == own.json()["usage"]
    stream = {**MESSAGES, "stream": True}
    translated = httpx.post(stack.gateway_url + "/v1/messages", json=stream, timeout=60)
    own = httpx.post(f"http://{vllm}/v1/messages", json=stream, timeout=60)
    assert _collapsed(translated.content) == _collapsed(own.content)  # chunking may differ
    count = {k: v for k, v in MESSAGES.items() if k != "max_tokens"}
    counted = httpx.post(stack.gateway_url + "/v1/messages/count_tokens", json=count, timeout=60)
    own_count = httpx.post(f"http://{vllm}/v1/messages/count_tokens", json=count, timeout=60)
    assert counted.json()["input_tokens"] == own_count.json()["input_tokens"]


def _collapsed(stream: bytes) -> list[str]:
    out: list[str] = []
    for name, _ in typed_events(stream):
        if not out or out[-1] != name:
            out.append(name)
    return out


# -- issue 12: one slow /metrics answer does not evict a serving replica ------------------------


class SlowMetricsProxy:
    """A reverse proxy in front of real vLLM (requests and streams pass through as they come)
    that can hold back ``/metrics`` answers: while ``slow_every`` is N > 0, every Nth one waits
    ``delay_s`` first, past the collector's ``timeout_ms``, as vLLM's own did under load
    (300-600 ms on two busy cores, more on a busier machine). Runs its own event loop in a
    thread."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.slow_every = 0
        self.metrics_asked = 0
        self.held = 0
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        if request.path == "/metrics":
            self.metrics_asked += 1
            if self.slow_every and self.metrics_asked % self.slow_every == 0:
                self.held += 1
                await asyncio.sleep(self.delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(
            request.method,
            f"http://{self.upstream}{request.path_qs}",
            headers=headers,
            data=await request.read(),
        ) as upstream:
            out = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
            )
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out


_HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@pytest.fixture(scope="module")
def slow_stack(
    vllm: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, SlowMetricsProxy]]:
    """The stack with the collector's defaults in front of vLLM behind :class:`SlowMetricsProxy`."""
    proxy = SlowMetricsProxy(vllm, delay_s=CollectorConfig().timeout_ms / 1000 + 0.5)
    proxy.start()
    work = tmp_path_factory.mktemp("slow-stack")
    config = work / "pointsman.yaml"
    config.write_text(
        yaml.safe_dump({"pools": {MODEL: [proxy.address]}, "debug": {"report_endpoint": True}})
    )
    options = StackOptions(
        simulate=False, config=config, gateway_port=0, workdir=work, ready_timeout=120
    )
    try:
        with Stack(options) as s:
            yield s, proxy
    finally:
        proxy.stop()


def test_slow_scrapes_do_not_evict_a_serving_replica(
    slow_stack: tuple[Stack, SlowMetricsProxy],
) -> None:
    """Issue 12: behind real vLLM, every third /metrics answer slower than the collector's
    timeout (its defaults: timeout_ms 1000, unhealthy_after 3) never takes the replica out:
    bursts of requests sent meanwhile are all served by it, picked (not failing open)."""
    stack, proxy = slow_stack
    collector = f"http://127.0.0.1:{stack.ports['collector_http']}/metrics"
    eventually(
        lambda: metric(collector, "pointsman_collector_scrapes_total", result="ok") > 0,
        "the collector scrapes vLLM",
        timeout=120,
    )
    timeouts = metric(collector, "pointsman_collector_scrapes_total", result="timeout")
    proxy.slow_every = 3
    served: list[tuple[int, str, str]] = []
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    def ask(client: httpx.Client) -> tuple[int, str, str]:
        r = client.post(stack.gateway_url + CHAT, json=body)
        route, endpoint = r.headers.get("x-pointsman-route"), r.headers.get("x-pointsman-endpoint")
        return r.status_code, route or "", endpoint or ""

    def timed_out() -> float:
        return metric(collector, "pointsman_collector_scrapes_total", result="timeout")

    deadline = time.monotonic() + 300
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(4) as pool:
        while timed_out() < timeouts + 4:  # bursts of 4 while the held answers time out
            assert time.monotonic() < deadline, "the held /metrics answers never timed out"
            served += pool.map(lambda _: ask(client), range(4))
    proxy.slow_every = 0
    assert proxy.held >= 4
    assert served and all(s == (200, "picked", proxy.address) for s in served), served
    assert metric(collector, "pointsman_collector_marked_unhealthy_total") == 0
