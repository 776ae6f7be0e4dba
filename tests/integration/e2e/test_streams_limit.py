"""More requests in flight than Envoy's default per-cluster limit all go through the shim.

Each request in flight holds an observer ext_proc stream for its whole response. At Envoy's
default circuit breaker (1,024 concurrent requests per cluster) the next stream to the shim
would overflow, and the ext_proc filter, failing open, would send its request on unprocessed:
no validation, no safety check, the default pool. The rendered config raises the shim cluster's
limits; this test holds more requests than 1,024 open through a real Envoy and checks that none
failed open.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Iterator

import aiohttp
import pytest

from bench.common.envoy_stats import failed_open
from pointsman.runtime import cancel_and_wait
from tests.integration.e2e.conftest import make_stack, shim_streams

pytestmark = pytest.mark.integration

#: Over Envoy's default of 1,024.
HELD = 1100
#: Requests sent at a time: the next batch waits until the shim holds the earlier ones, so the
#: shim is never asked for hundreds of decisions at once (a loaded machine would time them out).
BATCH = 50


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[None]:
    """This process's soft limit on open files raised to ``needed`` (the stack's processes,
    started inside, inherit it): Envoy holds two sockets per request in flight, the client
    and the simulator one each. Skips when the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"holding {HELD} requests needs {needed} open files; the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def hold(session: aiohttp.ClientSession, url: str) -> str:
    """A long generation: its response (not streamed) stays open until the test ends; what
    came back if it ends sooner."""
    body = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000}
    async with session.post(url, json=body) as r:
        return f"{r.status} {(await r.read())[:300]!r}"


def test_more_requests_in_flight_than_envoys_default_limit_all_reach_the_shim() -> None:
    sim = ["--time-scale", "1", "--max-num-seqs", "4096", "--num-gpu-blocks", "1000000"]
    with (
        open_files(4 * HELD + 1024),
        make_stack(
            models=["alpha"],
            replicas=1,
            sim_args=sim,
            # One replica holds them all: never saturated (a burst of 50 would count as 50 waiting).
            overrides={
                "shim": {"pick_timeout_ms": 5000},
                "picker": {
                    "saturation": {"queue_depth_threshold": 100_000, "kv_cache_util_threshold": 1.0}
                },
            },
        ) as stack,
    ):
        admin = f"http://127.0.0.1:{stack.ports['envoy_admin']}"
        url = f"{stack.gateway_url}/v1/chat/completions"
        skipped_before = failed_open(admin)

        def skipped() -> int:
            return failed_open(admin) - skipped_before

        async def held_by_the_shim(tasks: list[asyncio.Task[str]]) -> None:
            """Wait (120 s at most) until the shim holds a stream for every request sent."""
            deadline = time.monotonic() + 120
            while (held := (await asyncio.to_thread(shim_streams, stack))["active"]) < len(tasks):
                assert (n := skipped()) == 0, f"{n} requests failed open at {held} held"
                done = [t for t in tasks if t.done()]
                assert not done, f"a held request ended early: {done[0].result()}"
                assert time.monotonic() < deadline, (
                    f"the shim holds {held} streams of {len(tasks)} requests"
                )
                await asyncio.sleep(0.1)

        async def run() -> None:
            connector = aiohttp.TCPConnector(limit=0)
            timeout = aiohttp.ClientTimeout(total=None)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                tasks: list[asyncio.Task[str]] = []
                try:
                    while len(tasks) < HELD:
                        tasks += [
                            asyncio.create_task(hold(session, url))
                            for _ in range(min(BATCH, HELD - len(tasks)))
                        ]
                        await held_by_the_shim(tasks)
                    assert skipped() == 0
                finally:
                    await cancel_and_wait(tasks)

        asyncio.run(run())
