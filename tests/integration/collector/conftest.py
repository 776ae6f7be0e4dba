"""Fixtures for the collector's integration tests: small /metrics servers that speak the real
vLLM and SGLang text format (the unit fixtures, with the picker's numbers substituted)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from collector_fake_kube import FakeKube  # type: ignore[import-not-found]

FIXTURES = Path(__file__).parents[2] / "unit" / "collector" / "fixtures"

_VALUE_LINES = {
    "waiting": ("vllm:num_requests_waiting{", "sglang:num_queue_reqs{"),
    "running": ("vllm:num_requests_running{", "sglang:num_running_reqs{"),
    "kv": ("vllm:kv_cache_usage_perc{", "sglang:token_usage{"),
}


def render(template: str, *, waiting: int, running: int, kv: float) -> bytes:
    """The fixture page with the queue, running and KV lines set to these values."""
    values = {"waiting": float(waiting), "running": float(running), "kv": kv}
    out = []
    for line in template.splitlines():
        for field_name, prefixes in _VALUE_LINES.items():
            if line.startswith(prefixes):
                line = re.sub(r" [^ ]+$", f" {values[field_name]!r}", line)
        out.append(line)
    return ("\n".join(out) + "\n").encode()


@dataclass
class FakeEngine:
    """One fake replica: its page, how often it was scraped, and whether it answers."""

    fixture: str = "vllm_v1.txt"
    waiting: int = 0
    running: int = 0
    kv: float = 0.0
    status: int = 200
    hits: int = 0
    #: The next ``slow`` scrapes wait ``delay_s`` before they are answered.
    slow: int = 0
    delay_s: float = 0.0
    address: str = ""
    _template: str = field(default="", repr=False)

    def body(self) -> bytes:
        if not self._template:
            self._template = (FIXTURES / self.fixture).read_text()
        return render(self._template, waiting=self.waiting, running=self.running, kv=self.kv)


@dataclass
class EngineFleet:
    engines: list[FakeEngine] = field(default_factory=list)
    runners: list[web.AppRunner] = field(default_factory=list)

    async def add(self, **kwargs: object) -> FakeEngine:
        engine = FakeEngine(**kwargs)  # type: ignore[arg-type]

        async def metrics(_: web.Request) -> web.Response:
            engine.hits += 1
            if engine.slow > 0:
                engine.slow -= 1
                await asyncio.sleep(engine.delay_s)
            if engine.status != 200:
                return web.Response(status=engine.status, text="nope")
            return web.Response(body=engine.body(), content_type="text/plain")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        engine.address = f"127.0.0.1:{port}"
        self.engines.append(engine)
        self.runners.append(runner)
        return engine


@pytest.fixture
async def fleet() -> AsyncIterator[EngineFleet]:
    f = EngineFleet()
    try:
        yield f
    finally:
        for runner in f.runners:
            await runner.cleanup()


@pytest.fixture
def unique() -> str:
    """A suffix that keeps this test's subjects, buckets and pools apart from other tests'."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    """The fake Kubernetes API server (collector_fake_kube), started and stopped per test."""
    k = FakeKube()
    await k.start()
    try:
        yield k
    finally:
        await k.stop()
