"""Behaviour a router relies on: LoRA slots, aborts on hang-up, the CLI as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import time
import urllib.request

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import procs
from tests.integration.sim.conftest import StartSim

pytestmark = pytest.mark.integration

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


async def gauges(http: aiohttp.ClientSession, address: str) -> dict[str, float]:
    async with http.get(f"http://{address}/metrics") as resp:
        text = await resp.text()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if "finished_reason" in s.labels:
                out[f"{s.name}:{s.labels['finished_reason']}"] = s.value
            elif len(s.labels) == 2:
                out[s.name] = s.value
    return out


async def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_lora_adapter_requests_and_info_metric(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(lora_adapters=["sql-lora", "tool-lora"], max_loras=1, time_scale=0.2)
    address = sim.addresses[0]
    url = f"http://{address}/v1/chat/completions"
    seen: set[tuple[str, str]] = set()

    async def one(model: str) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": "q"}], "max_tokens": 30}
        async with http.post(url, json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["model"] == model

    tasks = [asyncio.create_task(one(m)) for m in ("sql-lora", "tool-lora", "sql-lora")]

    async def both_seen() -> bool:
        async with http.get(f"http://{address}/metrics") as resp:
            for family in text_string_to_metric_families(await resp.text()):
                if family.name == "vllm:lora_requests_info":
                    for s in family.samples:
                        assert s.labels["max_lora"] == "1"
                        seen.add(
                            (s.labels["running_lora_adapters"], s.labels["waiting_lora_adapters"])
                        )
        return ("sql-lora", "tool-lora") in seen

    # one slot: tool-lora waits while sql-lora runs
    await wait_for(both_seen, "sql-lora running while tool-lora waits")
    await asyncio.gather(*tasks)
    assert sim.replicas[0].engine.sched.lora_loads == 2


async def test_client_hang_up_aborts_the_request(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    sim = await start_sim(time_scale=1.0)
    address = sim.addresses[0]
    url = f"http://{address}/v1/chat/completions"
    for stream in (True, False):
        body = {
            "messages": [{"role": "user", "content": "long"}],
            "max_tokens": 5000,
            "stream": stream,
        }
        session = aiohttp.ClientSession()

        async def call(session: aiohttp.ClientSession = session, body: object = body) -> None:
            async with session.post(url, json=body) as resp:
                assert resp.status == 200
                await resp.read()

        task = asyncio.create_task(call())

        async def running() -> bool:
            return (await gauges(http, address))["vllm:num_requests_running"] == 1

        await wait_for(running, "the request to run")
        task.cancel()  # the client hangs up
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await session.close()

        async def idle() -> bool:
            return (await gauges(http, address))["vllm:num_requests_running"] == 0

        await wait_for(idle, "the hung-up request to be aborted")
    m = await gauges(http, address)
    assert m["vllm:request_success_total:abort"] == 2
    assert m["vllm:kv_cache_usage_perc"] == 0


def free_port_pair() -> int:
    """A port P with P and P+1 free now."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


def test_cli_starts_replicas_on_consecutive_ports() -> None:
    base = free_port_pair()
    proc = procs.spawn(
        "sim",
        [
            sys.executable,
            "-m",
            "pointsman.sim",
            "--host",
            "127.0.0.1",
            "--port",
            str(base),
            "--count",
            "2",
            "--model",
            "cli-model",
            "--time-scale",
            "0.01",
        ],
    )
    try:
        for port in (base, base + 1):
            url = f"http://127.0.0.1:{port}/health"

            def healthy(url: str = url) -> bool:
                return procs.http_ok(url)

            procs.wait_until(healthy, 30, f"sim on {port}", proc)
        req = urllib.request.Request(
            f"http://127.0.0.1:{base + 1}/v1/completions",
            data=json.dumps({"model": "cli-model", "prompt": "hi", "max_tokens": 2}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["x-sim-endpoint"] == f"127.0.0.1:{base + 1}"
            assert json.load(resp)["usage"]["completion_tokens"] == 2
        log = proc.output()
        assert (
            len(
                re.findall(
                    r"simulated vLLM replica on http://127\.0\.0\.1:\d+ serving cli-model", log
                )
            )
            == 2
        )
    finally:
        proc.stop()
    assert proc.popen.returncode == 0


@pytest.mark.parametrize("argv", [["--help"], ["--time-scale", "0"], ["--count", "0"]])
def test_cli_help_and_bad_flags(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from pointsman.sim import main

    with pytest.raises(SystemExit) as info:
        main(argv, prog="pointsman sim")
    out = capsys.readouterr()
    if argv == ["--help"]:
        assert info.value.code == 0
        for flag in ("--count", "--time-scale", "--lora-adapters", "--num-gpu-blocks"):
            assert flag in out.out
    else:
        assert info.value.code == 2 and "must be" in out.err


async def test_close_with_requests_in_flight_does_not_hang(http: aiohttp.ClientSession) -> None:
    from pointsman.sim import SimConfig, start_servers

    sim = await start_servers(SimConfig(port=0, time_scale=1.0), 1)
    address = sim.addresses[0]

    async def call(stream: bool) -> int:
        body = {
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5000,
            "stream": stream,
        }
        async with http.post(f"http://{address}/v1/chat/completions", json=body) as resp:
            await resp.read()
            return resp.status

    calls = [asyncio.create_task(call(s)) for s in (True, False)]

    async def both_running() -> bool:
        return (await gauges(http, address))["vllm:num_requests_running"] == 2

    await wait_for(both_running, "two requests in flight")
    await asyncio.wait_for(sim.close(), 10)
    assert await asyncio.gather(*calls) == [200, 503]  # a stream is cut, a plain call gets 503
