"""Fail-open and picked routes through the real shim: a dead replica costs a retry, health
checks take it out of the balanced traffic, and the real picker names a fallback.

The shim runs on a bus without a picker unless a test starts one, so it fails open: it names
the model (``x-selected-model``) and Envoy balances over the model's pool itself.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nats
import pytest
import yaml

from pointsman.v1 import EndpointMetrics, PoolSnapshot, encode, subjects
from tests.helpers import procs
from tests.integration.gateway.conftest import (
    READY,
    Replica,
    Shim,
    chat,
    envoy,
    replicas,
    wait_health,
)

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"


@pytest.fixture
def pair() -> Iterator[list[Replica]]:
    with replicas("delta", 2) as started:
        yield started


def test_fail_open_request_to_a_killed_replica_is_retried(pair: list[Replica], shim: Shim) -> None:
    """No health checks, no ejection: the dead replica stays in Envoy's pool, so requests keep
    being balanced onto it, and every one of them must be retried on the live one."""
    dead, live = pair
    pools = {"delta": [r.endpoint for r in pair]}
    gateway = {"health_check": {"enabled": False}, "eject_after_failures": 0}
    with envoy(pools, shim.port, gateway=gateway, report_endpoint=True) as gw:
        retried = f"cluster.{gw.cluster('delta')}.upstream_rq_retry_success"
        dead.kill()
        sent = 0
        while gw.stat(retried) < 3:
            assert sent < 300, "Envoy never balanced a request onto the dead replica"
            r = httpx.post(f"{gw.url}{CHAT}", json=chat("delta"), timeout=60)
            sent += 1
            assert r.status_code == 200, r.text
            assert r.headers["x-pointsman-route"] == "fail-open"
            assert r.headers["x-sim-endpoint"] == live.endpoint
            assert r.headers["x-pointsman-endpoint"] == live.endpoint


def test_health_checks_take_a_dead_replica_out_of_fail_open_routing(
    pair: list[Replica], shim: Shim
) -> None:
    dead, live = pair
    with envoy({"delta": [r.endpoint for r in pair]}, shim.port) as gw:
        wait_health(gw, "delta", dead.endpoint, healthy=True)
        dead.kill()
        wait_health(gw, "delta", dead.endpoint, healthy=False)
        retries = gw.stat(f"cluster.{gw.cluster('delta')}.upstream_rq_retry")
        for i in range(20):
            r = httpx.post(
                f"{gw.url}{CHAT}", json=chat("delta"), headers={"x-request-id": f"hc-{i}"}
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-sim-endpoint"] == live.endpoint
        # not one attempt on the dead replica (its health checks still fail to connect)
        for i in range(20):
            logged = gw.logged(f"hc-{i}")
            assert (logged["attempts"], logged["upstream"]) == (1, live.endpoint), logged
        assert gw.stat(f"cluster.{gw.cluster('delta')}.upstream_rq_retry") == retries


@pytest.fixture
def picker(shim: Shim, pair: list[Replica]) -> Iterator[None]:
    """The real collector and picker on the shim's bus, for the ``delta`` pool; stopped after,
    so the other tests of this package see a bus without a picker."""
    workdir = Path(tempfile.mkdtemp(prefix="pointsman-gateway-picker-"))
    collector_port, picker_port = procs.free_port(), procs.free_port()
    config = {
        "nats": {"url": shim.nats_url},
        "pools": {"delta": [r.endpoint for r in pair]},
        "collector": {"http_port": collector_port},
        "picker": {"http_port": picker_port, "warmup_ms": 0},
    }
    path = workdir / "pointsman.yaml"
    path.write_text(yaml.safe_dump(config))
    started: list[procs.Proc] = []
    try:
        for name, module, port in (
            ("collector", "pointsman_collector", collector_port),
            ("picker", "pointsman_picker", picker_port),
        ):
            proc = procs.spawn(
                name,
                [sys.executable, "-m", module, "--config", str(path)],
                env={"NATS_URL": shim.nats_url},
                log_dir=workdir,
            )
            started.append(proc)
            procs.wait_until(
                lambda port=port: procs.http_ok(f"http://127.0.0.1:{port}/readyz"),  # type: ignore[misc]
                READY,
                name,
                proc,
            )
        yield
    finally:
        for proc in reversed(started):
            proc.stop()


def test_real_picker_names_a_primary_and_a_fallback(
    pair: list[Replica], shim: Shim, picker: None
) -> None:
    """With the shim's default ``max_endpoints`` the pick Envoy gets is a list of two distinct
    endpoints of the pool, and the request goes to the first."""
    endpoints = {r.endpoint for r in pair}
    with envoy({"delta": sorted(endpoints)}, shim.port) as gw:
        answered: list[httpx.Response] = []

        def picked() -> bool:  # once the picker has the collector's first snapshot
            r = httpx.post(
                f"{gw.url}{CHAT}",
                json=chat("delta"),
                headers={"x-request-id": f"picked-{len(answered)}"},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            answered.append(r)
            return r.headers["x-pointsman-route"] == "picked"

        procs.wait_until(picked, READY, "a request routed by the picker")
        r = answered[-1]
        request_id = f"picked-{len(answered) - 1}"
        logged = gw.logged(request_id)
        picked = logged["picked"].split(",")
        assert len(picked) == 2 and set(picked) == endpoints, logged
        assert logged["upstream"] == picked[0] == r.headers["x-sim-endpoint"]


@pytest.fixture
def picker_alone(shim: Shim) -> Iterator[int]:
    """The real picker on the shim's bus with no collector (the test publishes the snapshots);
    stopped after. Yields its HTTP port."""
    workdir = Path(tempfile.mkdtemp(prefix="pointsman-gateway-picker-alone-"))
    port = procs.free_port()
    path = workdir / "pointsman.yaml"
    path.write_text(yaml.safe_dump({"nats": {"url": shim.nats_url}, "picker": {"http_port": port}}))
    proc = procs.spawn(
        "picker",
        [sys.executable, "-m", "pointsman_picker", "--config", str(path)],
        env={"NATS_URL": shim.nats_url},
        log_dir=workdir,
    )
    try:
        procs.wait_until(
            lambda: procs.http_ok(f"http://127.0.0.1:{port}/readyz"), READY, "picker", proc
        )
        yield port
    finally:
        proc.stop()


def test_no_endpoints_from_the_picker_fails_open_to_envoys_balancing(
    pair: list[Replica], shim: Shim, picker_alone: int
) -> None:
    """Issue 12: the picker answers ``no_endpoints`` (its last snapshot says every replica is
    down), the replicas are fine as far as Envoy's health checks know: the shim (``fail-open``)
    lets Envoy balance over the pool instead of answering 503."""
    endpoints = sorted(r.endpoint for r in pair)
    down = PoolSnapshot(
        pool="delta",
        collector="test",
        published_at=time.time(),
        endpoints=[
            EndpointMetrics(address=e, healthy=False, scraped_at=time.time(), error="HTTP 500")
            for e in endpoints
        ],
    )

    async def publish() -> None:
        nc = await nats.connect(shim.nats_url)
        await nc.publish(subjects.metrics("delta"), encode(down))
        await nc.drain()

    with envoy({"delta": endpoints}, shim.port) as gw:
        for endpoint in endpoints:
            wait_health(gw, "delta", endpoint, healthy=True)
        answered: list[httpx.Response] = []

        def failed_open() -> bool:  # once the picker has the snapshot, it says no_endpoints
            asyncio.run(publish())
            r = httpx.post(f"{gw.url}{CHAT}", json=chat("delta"), timeout=60)
            answered.append(r)
            assert r.status_code == 200, r.text
            return "no_endpoints" in _shim_metric(shim, "pointsman_shim_fail_open_total{service=")

        procs.wait_until(failed_open, READY, "a no_endpoints pick failing open")
        for _ in range(6):
            r = httpx.post(f"{gw.url}{CHAT}", json=chat("delta"), timeout=60)
            assert r.status_code == 200, r.text
            assert r.headers["x-pointsman-route"] == "fail-open"
            assert r.headers["x-sim-endpoint"] in endpoints
        metrics = httpx.get(f"http://127.0.0.1:{picker_alone}/metrics").text
        assert 'pointsman_picker_decisions_total{pool="delta",status="no_endpoints"}' in metrics


def _shim_metric(shim: Shim, prefix: str) -> str:
    text = httpx.get(f"http://127.0.0.1:{shim.http_port}/metrics").text
    return "\n".join(line for line in text.splitlines() if line.startswith(prefix))
