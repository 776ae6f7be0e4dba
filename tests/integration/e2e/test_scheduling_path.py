"""Picker decisions that change what Envoy does: shedding (429) and prefill/decode headers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pointsman.stack import Stack, StackOptions
from pointsman.stack.procs import free_port_block, http_status, spawn, wait_ready
from tests.integration.e2e.conftest import SIM_ARGS, make_stack, queue_filled

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


def body(model: str, max_tokens: int = 2) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
    }


def test_saturated_pool_sheds_low_priority_only() -> None:
    """A shim that does not wait (``queue_wait_ms: 0``) gets the instant shedding of old; with
    waiting, flow control queues instead (test_flow_control)."""
    # Ten times slower than the other tests' simulators: the queue of long generations must
    # outlast two snapshot intervals on a loaded machine (at x0.02 it drains in about 2 s).
    with make_stack(
        models=["solo"],
        replicas=1,
        sim_args=["--time-scale", "0.2", "--max-num-seqs", "4"],
        overrides={
            "picker": {"objectives": {"batch": -1, "chat": 0}},
            "shim": {"pick_timeout_ms": 500, "queue_wait_ms": 0},
        },
    ) as stack:
        (endpoint,) = stack.pools["solo"]
        with queue_filled(endpoint, "solo", requests=16, min_waiting=8, stack=stack):
            # The picker sheds once the collector's next snapshot shows the queue: ask until
            # it does (a batch request let through waits behind the queue: give up on it).
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = httpx.post(
                        f"{stack.gateway_url}{CHAT}",
                        json=body("solo"),
                        headers={"x-llm-d-inference-objective": "batch"},
                        timeout=2,
                    )
                    if r.status_code == 429:
                        break
                except httpx.TimeoutException:
                    pass
                assert time.monotonic() < deadline, "the saturated pool never shed"
                time.sleep(0.1)
            assert r.headers["x-pointsman-shed-reason"] == "saturated"
            assert r.json()["error"]["type"] == "rate_limit_exceeded"
            r = httpx.post(
                f"{stack.gateway_url}{CHAT}",
                json=body("solo"),
                headers={"x-pointsman-priority": "1"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
            r = httpx.post(
                f"{stack.gateway_url}{CHAT}",
                json=body("solo"),
                headers={"x-llm-d-inference-objective": "chat"},
                timeout=120,
            )
            assert r.status_code == 200, r.text
        metrics = httpx.get(f"http://127.0.0.1:{stack.ports['shim_http']}/metrics").text
        assert 'pointsman_shim_rejections_total{reason="shed",status="429"}' in metrics


def test_prefill_decode_roles(tmp_path: Path) -> None:
    base = free_port_block(3)
    sim = spawn(
        "sim-pd",
        [
            sys.executable,
            "-m",
            "pointsman.sim",
            "--port",
            str(base),
            "--count",
            "3",
            "--model",
            "pd-model",
            *SIM_ARGS,
        ],
        tmp_path,
    )
    try:
        for i in range(3):
            url = f"http://127.0.0.1:{base + i}/health"
            wait_ready(sim, lambda url=url: http_status(url) == 200, 30, "simulator")  # type: ignore[misc]
        prefill = f"127.0.0.1:{base}"
        decode = [f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 2}"]
        config = tmp_path / "pd.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "pools": {
                        "pd-model": [
                            {"address": prefill, "labels": {"role": "prefill"}},
                            *({"address": d, "labels": {"role": "decode"}} for d in decode),
                        ]
                    },
                    "debug": {"report_endpoint": True},
                }
            )
        )
        with Stack(StackOptions(simulate=False, config=config, gateway_port=0)) as stack:
            for _ in range(6):
                r = httpx.post(f"{stack.gateway_url}{CHAT}", json=body("pd-model"))
                assert r.status_code == 200, r.text
                assert r.headers["x-pointsman-endpoint"] in decode
                assert r.headers["x-sim-endpoint"] in decode
                assert r.headers.get("x-prefiller-host-port") == prefill, dict(r.headers)
    finally:
        sim.stop()
