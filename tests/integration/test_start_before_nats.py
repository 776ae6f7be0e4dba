"""Every service started before nats-server waits for it, connects when it appears, then serves.

The same start-up path for all four (``pointsman.bus.ServiceBus``): alive at once, not ready
(``/readyz`` 503) while NATS is missing, ready once a real nats-server comes up on the URL it
was given, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml

from pointsman.v1 import (
    EndpointMetrics,
    PickRequest,
    PickStatus,
    PoolSnapshot,
    routes,
    subjects,
)
from pointsman.v1.classify import ClassifyRequest, Message
from tests.helpers import procs

pytestmark = pytest.mark.integration


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _config(service: str, port: int) -> dict[str, Any]:
    if service == "picker":
        return {"picker": {"http_host": "127.0.0.1", "http_port": port, "warmup_ms": 0}}
    if service == "collector":
        return {"collector": {"http_port": port, "sharding": {"enabled": False}}}
    if service == "shim":
        return {
            "shim": {
                "listen": f"127.0.0.1:{procs.free_port()}",
                "health_listen": f"127.0.0.1:{procs.free_port()}",
                "http_port": port,
                "failure_mode": "fail-closed",  # so readiness follows NATS
            }
        }
    return {
        "pools": {"small": ["127.0.0.1:1"]},
        "classifier": {"http_port": port, "threads": 1, "default_model": "small"},
    }


async def _serves(service: str, url: str) -> None:
    """One real request answered over the bus, for the services that answer requests."""
    if service not in {"picker", "classifier"}:
        return
    nc = await nats.connect(url)
    try:
        if service == "picker":
            snap = PoolSnapshot(
                pool="m",
                collector="test",
                published_at=time.time(),
                endpoints=[EndpointMetrics(address="10.0.0.1:8000", scraped_at=time.time())],
            )
            deadline = time.monotonic() + 60
            while True:
                await nc.publish(subjects.metrics("m"), routes.SNAPSHOTS.encode(snap))
                req = PickRequest(request_id="r", model="m")
                msg = await nc.request(routes.PICK.subject, routes.PICK.encode(req), timeout=5)
                if routes.PICK.decode_reply(msg.data).status is PickStatus.OK:
                    return
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        req_c = ClassifyRequest(
            request_id="r", model="small", messages=[Message(role="user", content="hi")]
        )
        msg = await nc.request(routes.CLASSIFY.subject, routes.CLASSIFY.encode(req_c), timeout=30)
        assert routes.CLASSIFY.decode_reply(msg.data).model == "small"
    finally:
        await nc.close()


@pytest.mark.parametrize("service", ["picker", "collector", "shim", "classifier"])
async def test_service_waits_for_nats_then_serves(service: str, tmp_path: Path) -> None:
    port, nats_port = procs.free_port(), procs.free_port()
    url = f"nats://127.0.0.1:{nats_port}"
    cfg = tmp_path / "pointsman.yaml"
    cfg.write_text(yaml.safe_dump({"nats": {"url": url}, **_config(service, port)}))
    module = {"shim": "pointsman_shim", "collector": "pointsman_collector"}.get(
        service, f"pointsman_{service}"
    )
    proc = procs.spawn(
        service,
        [sys.executable, "-m", module, "--config", str(cfg)],
        env={"HF_HUB_OFFLINE": "1"},
        log_dir=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        procs.wait_until(lambda: _status(f"{base}/healthz") == 200, 180, service, proc)
        await asyncio.sleep(1.0)  # a few failed connection attempts: still alive, not ready
        assert proc.popen.poll() is None, proc.output()
        assert _status(f"{base}/readyz") == 503
        with procs.nats_server(port=nats_port) as started:
            assert started == url
            procs.wait_until(lambda: _status(f"{base}/readyz") == 200, 180, service, proc)
            await _serves(service, url)
            proc.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.popen.wait, 20) == 0, proc.output()
        assert "Traceback" not in proc.output(), proc.output()
    finally:
        proc.stop()
