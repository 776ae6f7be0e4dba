"""Flow control through Envoy: a saturated pool's requests wait in the picker, fair across
tenants, and leave with a reason when they cannot be served."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest

from tests.integration.e2e.conftest import make_stack, queue_filled

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
#: One engine slot, slow enough that a burst queues: each answer takes ~0.1-0.2 s.
SLOW_SIM = ["--time-scale", "0.1", "--max-num-seqs", "1"]


def body(max_tokens: int = 2) -> dict[str, object]:
    return {
        "model": "solo",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
    }


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_heavy_tenant_cannot_starve_a_light_one() -> None:
    """Tenant "heavy" sends 40 requests at once; with 20+ of them waiting in the picker, tenant
    "light" sends 3. FIFO would serve light after all of heavy's; the VTC serves it as soon as
    its counter is the lowest, so light is done while heavy still has a backlog."""
    with make_stack(
        models=["solo"],
        replicas=1,
        sim_args=SLOW_SIM,
        overrides={
            "picker": {
                "saturation": {"queue_depth_threshold": 1},
                "flow_control": {"ttl_ms": 120_000},
            },
            "shim": {"pick_timeout_ms": 500, "queue_wait_ms": 120_000},
        },
    ) as stack:
        picker_metrics = f"http://127.0.0.1:{stack.ports['picker_http']}/metrics"

        async def run() -> tuple[int, list[int]]:
            done = {"heavy": 0, "light": 0}
            statuses: list[int] = []

            async def send(client: httpx.AsyncClient, tenant: str) -> None:
                r = await client.post(
                    f"{stack.gateway_url}{CHAT}", json=body(200),
                    headers={"authorization": f"Bearer {tenant}"},
                )  # fmt: skip
                statuses.append(r.status_code)
                done[tenant] += 1

            async with httpx.AsyncClient(timeout=300) as client:
                heavy = [asyncio.create_task(send(client, "heavy")) for _ in range(40)]
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while _metric((await client.get(picker_metrics)).text,
                              "pointsman_picker_flow_queued{") < 20:  # fmt: skip
                    assert loop.time() < deadline, "the heavy burst never queued 20 requests"
                    await asyncio.sleep(0.05)
                await asyncio.gather(*(send(client, "light") for _ in range(3)))
                heavy_left = 40 - done["heavy"]
                await asyncio.gather(*heavy)
            return heavy_left, statuses

        heavy_left, statuses = asyncio.run(run())
        print(f"heavy requests still waiting when light was done: {heavy_left}")
        assert statuses == [200] * 43, statuses
        # FIFO would leave 0; each light request goes at most one heavy one behind.
        assert heavy_left >= 10, f"only {heavy_left} heavy requests were still waiting"
        text = httpx.get(picker_metrics).text
        assert _metric(text, "pointsman_picker_flow_dispatched_total{") >= 20
        assert _metric(text, "pointsman_picker_flow_dropped_total{") == 0


def test_waiting_past_the_ttl_answers_503_with_the_reason() -> None:
    with make_stack(
        models=["solo"],
        replicas=1,
        # slow enough that the filled queue lasts ~20 s, however loaded the machine
        sim_args=["--time-scale", "0.2", "--max-num-seqs", "4"],
        overrides={
            "picker": {"flow_control": {"max_queued_per_tenant": 1}},
            "shim": {"pick_timeout_ms": 500, "queue_wait_ms": 5000},
        },
    ) as stack:
        (endpoint,) = stack.pools["solo"]
        picker_metrics = f"http://127.0.0.1:{stack.ports['picker_http']}/metrics"
        with queue_filled(endpoint, "solo", requests=16, min_waiting=8):

            async def two() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=60) as client:
                    first = asyncio.create_task(client.post(f"{stack.gateway_url}{CHAT}",
                                                            json=body()))  # fmt: skip
                    # the second is sent once the first waits (a condition, not a delay)
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 30
                    while _metric((await client.get(picker_metrics)).text,
                                  "pointsman_picker_flow_queued{") < 1:  # fmt: skip
                        assert not first.done(), (await first).text
                        assert loop.time() < deadline, "the first request never waited"
                        await asyncio.sleep(0.02)
                    second = await client.post(f"{stack.gateway_url}{CHAT}", json=body())
                    return [await first, second]

            waited, refused = asyncio.run(two())
        assert waited.status_code == 503, waited.text
        assert waited.headers["x-pointsman-drop-reason"] == "ttl_expired"
        assert waited.json()["error"]["type"] == "service_unavailable"
        # the same (default) tenant already had its one place in the queue
        assert refused.status_code == 429, refused.text
        assert refused.headers["x-pointsman-drop-reason"] == "tenant_queue_full"
        assert refused.json()["error"]["type"] == "rate_limit_exceeded"
        shim = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics").text
        assert 'pointsman_shim_rejections_total{reason="dropped",status="503"}' in shim
        picker = httpx.get(f"http://127.0.0.1:{stack.ports['picker_http']}/metrics").text
        assert re.search(r'pointsman_picker_flow_dropped_total\{[^}]*reason="ttl_expired"', picker)
        assert re.search(
            r'pointsman_picker_flow_dropped_total\{[^}]*reason="tenant_queue_full"', picker
        )
