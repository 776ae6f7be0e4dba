"""The ops endpoints answer while the service's own event loop is saturated (real HTTP on
loopback: the ops server runs on its own thread and loop)."""

from __future__ import annotations

import threading
import time

import prometheus_client

from pointsman.runtime import OpsServer
from pointsman.stack.procs import http_status

#: Generous for a loaded machine; docs/reliability.md gives the measured figures (< 1 s).
ANSWER_WITHIN_S = 5.0


async def test_ops_answer_while_the_service_loop_never_yields() -> None:
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("busy_total", "work done", registry=registry).inc()
    ops = OpsServer(0, lambda: (True, "ok"), host="127.0.0.1", registry=registry)
    port = await ops.start()
    answers: dict[str, int] = {}

    def probe() -> None:
        for path in ("/healthz", "/readyz", "/metrics"):
            answers[path] = http_status(f"http://127.0.0.1:{port}{path}", timeout=ANSWER_WITHIN_S)

    prober = threading.Thread(target=probe)
    prober.start()
    # The service's loop is saturated: CPU-bound work that never awaits, until the probes end
    # (or 60 s: on the service's own loop they would all time out).
    deadline = time.monotonic() + 60
    while prober.is_alive() and time.monotonic() < deadline:
        sum(range(10_000))
    prober.join()
    try:
        assert answers == {"/healthz": 200, "/readyz": 200, "/metrics": 200}
    finally:
        await ops.stop()
    assert http_status(f"http://127.0.0.1:{port}/healthz", timeout=1) == 0  # stopped


async def test_readiness_reason_and_status_from_the_ops_thread() -> None:
    state = {"ready": False}
    ops = OpsServer(
        0,
        lambda: (state["ready"], "waiting for NATS" if not state["ready"] else "ok"),
        host="127.0.0.1",
        registry=prometheus_client.CollectorRegistry(),
    )
    port = await ops.start()
    try:
        assert http_status(f"http://127.0.0.1:{port}/readyz", timeout=5) == 503
        state["ready"] = True
        assert http_status(f"http://127.0.0.1:{port}/readyz", timeout=5) == 200
    finally:
        await ops.stop()
