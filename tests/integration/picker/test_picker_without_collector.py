"""Issue 12: with the collector gone, routing goes on. Real processes: two simulated vLLM
replicas, the collector scraping them, a picker, a nats-server; the collector is SIGKILLed.

Before, about 1 s after the collector died every pick answered ``no_endpoints``. Now the picker
serves from the last known endpoints (stale metrics ignored; in-flight counts spread the load)
and reports them in ``pointsman_picker_stale_endpoints``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import nats
import pytest
import yaml

from pointsman.v1 import PickReply, PickRequest, PickStatus, decode, encode, subjects
from tests.helpers import procs
from tests.integration.gateway.conftest import replicas
from tests.integration.picker.conftest import StartPicker

pytestmark = pytest.mark.integration


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


async def test_picks_go_on_after_the_collector_is_killed(
    nats_url: str, start_picker: StartPicker, tmp_path: Path
) -> None:
    unique = uuid.uuid4().hex[:8]
    pool = f"alpha-{unique}"
    with replicas(pool, 2) as fleet:
        endpoints = {r.endpoint for r in fleet}
        cfg = tmp_path / "collector.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "nats": {"url": nats_url},
                    "pools": {pool: sorted(endpoints)},
                    "collector": {
                        "http_host": "127.0.0.1",
                        "http_port": procs.free_port(),
                        "sharding": {"subject": f"test.{unique}.hb"},
                        "latest": {"bucket": f"m-{unique}"},
                    },
                }
            )
        )
        collector = procs.spawn(
            "collector",
            [sys.executable, "-m", "pointsman_collector", "--config", str(cfg)],
            log_dir=tmp_path,
        )
        try:
            picker = start_picker({"stale_after_ms": 1000})
            port = picker.extra["port"]
            nc = await nats.connect(nats_url)

            async def pick(i: int) -> PickReply:
                req = PickRequest(request_id=f"{unique}-{i}", model=pool, prompt=f"hello {i}")
                msg = await nc.request(subjects.PICK, encode(req), timeout=5)
                return decode(msg.data, PickReply)

            deadline = time.monotonic() + 60
            while (reply := await pick(-1)).status is not PickStatus.OK or len(reply.endpoints) < 2:
                assert time.monotonic() < deadline, (reply, collector.tail())
                await asyncio.sleep(0.1)

            collector.popen.kill()
            collector.popen.wait(10)
            # Past the staleness window: every endpoint's metrics are stale now.
            stale = f'pointsman_picker_stale_endpoints{{pool="{pool}"}} 2.0'
            deadline = time.monotonic() + 30
            while stale not in await asyncio.to_thread(_metrics, port):
                assert time.monotonic() < deadline, "the picker never saw its metrics go stale"
                await asyncio.sleep(0.2)

            replies = [await pick(i) for i in range(20)]
            assert [r.status for r in replies] == [PickStatus.OK] * 20
            assert all(set(r.endpoints) <= endpoints for r in replies)
            # no completions arrive: the in-flight counts alternate the primary
            firsts = Counter(r.endpoints[0] for r in replies)
            assert set(firsts) == endpoints and max(firsts.values()) <= 11, firsts
            text = await asyncio.to_thread(_metrics, port)
            assert f'pointsman_picker_stale_picks_total{{pool="{pool}"}} 20.0' in text
            assert 'status="no_endpoints"' not in text
            await nc.close()
        finally:
            collector.stop()
