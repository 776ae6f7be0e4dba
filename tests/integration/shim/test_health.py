"""The shim's gRPC health service and HTTP probes, on their own ports."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import procs

pytestmark = pytest.mark.integration


def start_shim(tmp_path: Path, nats_url: str, failure_mode: str) -> tuple[procs.Proc, int, int]:
    health_port, http_port = procs.free_port(), procs.free_port()
    config = {
        "nats": {"url": nats_url},
        "shim": {
            "listen": f"127.0.0.1:{procs.free_port()}",
            "health_listen": f"127.0.0.1:{health_port}",
            "http_port": http_port,
            "failure_mode": failure_mode,
        },
    }
    path = tmp_path / f"shim-{failure_mode}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = procs.spawn("shim", [sys.executable, "-m", "pointsman_shim", "--config", str(path)])
    procs.wait_until(lambda: procs.port_open(health_port), 30, "shim health port", proc)
    return proc, health_port, http_port


def check(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)


def test_ready_with_nats(tmp_path: Path, nats_url: str) -> None:
    proc, health_port, http_port = start_shim(tmp_path, nats_url, "fail-closed")
    try:
        procs.wait_until(
            lambda: check(health_port) == health_pb2.HealthCheckResponse.SERVING, 15, "SERVING"
        )
        assert (
            check(health_port, "envoy.service.ext_proc.v3.ExternalProcessor")
            == health_pb2.HealthCheckResponse.SERVING
        )
        assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{http_port}/healthz").status_code == 200
        assert (
            "pointsman_shim_active_streams"
            in httpx.get(f"http://127.0.0.1:{http_port}/metrics").text
        )
    finally:
        proc.stop()


def test_fail_closed_without_nats_is_alive_but_not_ready(tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{procs.free_port()}"
    proc, health_port, http_port = start_shim(tmp_path, dead, "fail-closed")
    try:
        procs.wait_until(
            lambda: procs.http_ok(f"http://127.0.0.1:{http_port}/healthz"), 15, "healthz", proc
        )
        assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 503
        assert check(health_port) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        proc.stop()


def test_fail_open_without_nats_stays_ready(tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{procs.free_port()}"
    proc, health_port, http_port = start_shim(tmp_path, dead, "fail-open")
    try:
        procs.wait_until(
            lambda: check(health_port) == health_pb2.HealthCheckResponse.SERVING, 15, "SERVING"
        )
        assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200
    finally:
        proc.stop()


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"shim": {"pick_timeout_ms": -1, "failure_mod": "fail-open"}}))
    r = subprocess.run(
        [sys.executable, "-m", "pointsman_shim", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    assert "shim.pick_timeout_ms" in r.stderr
    assert "shim.failure_mod" in r.stderr
