"""``python -m pointsman_collector --config FILE`` as a real process: config, hot reload, HTTP."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

import aiohttp
import nats
import pytest
import yaml

from pointsman.v1 import PoolSnapshot, decode, subjects
from tests.helpers import procs

pytestmark = pytest.mark.integration


async def _get(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(1)) as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return 0, ""


async def test_process_reads_config_hot_reloads_and_serves_http(
    nats_url: str, fleet: object, unique: str, tmp_path: Path
) -> None:
    a = await fleet.add(waiting=1)  # type: ignore[attr-defined]
    b = await fleet.add(waiting=2)  # type: ignore[attr-defined]
    c = await fleet.add(waiting=3)  # type: ignore[attr-defined]
    port = procs.free_port()
    pool_a, pool_b = f"a-{unique}", f"b-{unique}"
    static = tmp_path / "static.yaml"
    static.write_text(yaml.safe_dump({pool_b: [b.address]}))
    cfg = tmp_path / "pointsman.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "nats": {"url": "nats://127.0.0.1:1"},  # NATS_URL must win
                "pools": {pool_a: [a.address]},
                "collector": {
                    "http_port": port,
                    "static_file": "static.yaml",
                    "reload_ms": 100,
                    "sharding": {"subject": f"test.{unique}.hb", "lease_ms": 200},
                    "latest": {"bucket": f"m-{unique}"},
                },
            }
        )
    )
    nc = await nats.connect(nats_url)
    seen: dict[str, PoolSnapshot] = {}

    async def cb(msg: object) -> None:
        snap = decode(msg.data, PoolSnapshot)  # type: ignore[attr-defined]
        seen[snap.pool] = snap

    await nc.subscribe(subjects.METRICS_ALL, cb=cb)
    proc = procs.spawn(
        "collector",
        [sys.executable, "-m", "pointsman_collector", "--config", str(cfg)],
        env={"NATS_URL": nats_url},
    )

    async def until(check: object, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await check():  # type: ignore[operator]
                return
            assert proc.popen.poll() is None, proc.output()
            await asyncio.sleep(0.05)
        raise AssertionError(f"{what} not seen in {timeout}s\n{proc.output()}")

    def addresses(pool: str) -> set[str]:
        snap = seen.get(pool)
        return {e.address for e in snap.endpoints if e.healthy} if snap else set()

    try:

        async def ready() -> bool:
            return (await _get(f"http://127.0.0.1:{port}/readyz"))[0] == 200

        await until(ready, "/readyz")
        assert (await _get(f"http://127.0.0.1:{port}/healthz"))[0] == 200

        async def both_pools() -> bool:
            return addresses(pool_a) == {a.address} and addresses(pool_b) == {b.address}

        await until(both_pools, "snapshots of both pools")

        static.write_text(yaml.safe_dump({pool_b: [b.address, {"address": c.address}]}))

        async def reloaded() -> bool:
            return addresses(pool_b) == {b.address, c.address}

        await until(reloaded, "hot-reloaded static file")

        status, text = await _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'pointsman_collector_scrapes_total{result="ok"}' in text
        assert "pointsman_collector_scrape_seconds_bucket" in text
        assert 'pointsman_collector_endpoints{state="owned"} 3.0' in text
        assert "pointsman_collector_publishes_total" in text

        proc.popen.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.popen.wait, 30)
        assert code == 0, proc.output()
    finally:
        proc.stop()
        await nc.close()


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("collector: {interval_msec: 50}\n")
    proc = procs.spawn(
        "collector", [sys.executable, "-m", "pointsman_collector", "--config", str(cfg)]
    )
    assert proc.popen.wait(30) == 2
    assert "collector.interval_msec" in proc.output()


async def test_waits_for_nats_live_but_not_ready(unique: str, tmp_path: Path) -> None:
    port, nats_port = procs.free_port(), procs.free_port()
    cfg = tmp_path / "pointsman.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "pools": {f"p-{unique}": ["127.0.0.1:1"]},
                "collector": {"http_port": port, "sharding": {"enabled": False}},
            }
        )
    )
    proc = procs.spawn(
        "collector",
        [sys.executable, "-m", "pointsman_collector", "--config", str(cfg)],
        env={"NATS_URL": f"nats://127.0.0.1:{nats_port}"},
    )
    try:
        deadline = time.monotonic() + 60
        while (await _get(f"http://127.0.0.1:{port}/healthz"))[0] != 200:
            assert time.monotonic() < deadline and proc.popen.poll() is None, proc.output()
            await asyncio.sleep(0.05)
        status, text = await _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 503 and "NATS" in text
        with procs.nats_server(port=nats_port):
            deadline = time.monotonic() + 60
            while (await _get(f"http://127.0.0.1:{port}/readyz"))[0] != 200:
                assert time.monotonic() < deadline, proc.output()
                await asyncio.sleep(0.05)
            proc.popen.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.popen.wait, 30) == 0, proc.output()
    finally:
        proc.stop()


async def test_sigterm_while_waiting_for_nats_exits_cleanly(tmp_path: Path) -> None:
    port = procs.free_port()
    cfg = tmp_path / "pointsman.yaml"
    cfg.write_text(yaml.safe_dump({"collector": {"http_port": port}}))
    proc = procs.spawn(
        "collector",
        [sys.executable, "-m", "pointsman_collector", "--config", str(cfg)],
        env={"NATS_URL": f"nats://127.0.0.1:{procs.free_port()}"},
    )
    try:
        deadline = time.monotonic() + 60
        while (await _get(f"http://127.0.0.1:{port}/healthz"))[0] != 200:
            assert time.monotonic() < deadline and proc.popen.poll() is None, proc.output()
            await asyncio.sleep(0.05)
        proc.popen.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.popen.wait, 30) == 0, proc.output()
    finally:
        proc.stop()
