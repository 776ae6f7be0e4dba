"""A real picker process answering picks over a real nats-server."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections import Counter

import nats
import pytest
from nats.aio.client import Client as NATS

from pointsman.v1 import (
    CompletionEvent,
    EndpointMetrics,
    ModelsReply,
    ModelsRequest,
    PickReply,
    PickRequest,
    PickStatus,
    PoolSnapshot,
    decode,
    encode,
    subjects,
)
from tests.helpers.snapshots import snapshot
from tests.integration.picker.conftest import StartPicker

pytestmark = pytest.mark.integration


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return str(resp.read().decode())


async def ask(nc: NATS, model: str, **kw: object) -> PickReply:
    kw.setdefault("request_id", uuid.uuid4().hex)
    req = PickRequest(model=model, **kw)  # type: ignore[arg-type]
    msg = await nc.request(subjects.PICK, encode(req), timeout=2)
    return decode(msg.data, PickReply)


async def test_pick_follows_snapshots(nats_url: str, start_picker: StartPicker) -> None:
    port = start_picker(replica_id="p1").extra["port"]
    nc = await nats.connect(nats_url)
    try:
        pool = f"m-{uuid.uuid4().hex[:6]}"
        reply = await ask(nc, pool)
        assert reply.status is PickStatus.UNKNOWN_MODEL

        snap = snapshot(pool, **{"a-1": 5, "b-2": 0, "c-3": 9})
        await nc.publish(subjects.metrics(pool), encode(snap))
        await nc.flush()
        deadline = time.monotonic() + 60
        while (reply := await ask(nc, pool)).status is PickStatus.UNKNOWN_MODEL:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert reply.status is PickStatus.OK
        assert reply.endpoints == ["b:2", "a:1", "c:3"]
        assert reply.picker == "p1"

        # subset hint: only a:1 and c:3 may be picked
        reply = await ask(nc, pool, subset=["a:1", "c:3"])
        assert reply.endpoints[0] == "a:1"
        assert set(reply.endpoints) <= {"a:1", "c:3"}

        models = decode(
            (await nc.request(subjects.MODELS, encode(ModelsRequest()), timeout=2)).data,
            ModelsReply,
        )
        assert pool in [p.name for p in models.pools]

        # only stale metrics (no collector any more): served from the last known healthy
        # endpoint; one last seen unhealthy: nothing to pick
        old = snapshot(pool, **{"a-1": 0, "d-4": 0})
        for ep in old.endpoints:
            ep.scraped_at -= 60
        old.endpoints[1].healthy = False
        other = f"{pool}-old"
        old.pool = other
        await nc.publish(subjects.metrics(other), encode(old))
        down = snapshot(pool, **{"d-4": 0})
        down.endpoints[0].healthy = False
        dead = f"{pool}-down"
        down.pool = dead
        await nc.publish(subjects.metrics(dead), encode(down))
        await nc.flush()
        deadline = time.monotonic() + 60
        while (reply := await ask(nc, other)).status is PickStatus.UNKNOWN_MODEL:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert reply.status is PickStatus.OK
        assert reply.endpoints == ["a:1"]
        while (reply := await ask(nc, dead)).status is PickStatus.UNKNOWN_MODEL:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert reply.status is PickStatus.NO_ENDPOINTS
    finally:
        await nc.close()

    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert "pointsman_picker_decision_seconds_bucket" in text
    assert f'pointsman_picker_picks_total{{endpoint="b:2",pool="{pool}"}}' in text
    assert 'status="no_endpoints"' in text
    assert f'pointsman_picker_stale_picks_total{{pool="{pool}-old"}} 1.0' in text


async def test_in_flight_spreads_between_snapshots(
    nats_url: str, start_picker: StartPicker
) -> None:
    """With no new snapshot, assignments count as load, so picks rotate; completions release."""
    start_picker()
    nc = await nats.connect(nats_url)
    try:
        pool = f"m-{uuid.uuid4().hex[:6]}"
        await nc.publish(subjects.metrics(pool), encode(snapshot(pool, **{"a-1": 0, "b-2": 0})))
        await nc.flush()
        deadline = time.monotonic() + 60
        while (await ask(nc, pool)).status is PickStatus.UNKNOWN_MODEL:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        # fresh snapshot: nothing pending
        await nc.publish(subjects.metrics(pool), encode(snapshot(pool, **{"a-1": 0, "b-2": 0})))
        await nc.flush()
        await asyncio.sleep(0.1)
        replies = [await ask(nc, pool, request_id=f"r{i}") for i in range(10)]
        firsts = Counter(r.endpoints[0] for r in replies)
        assert firsts == {"a:1": 5, "b:2": 5}
        # complete every request sent to a:1: it becomes the least loaded
        for i, r in enumerate(replies):
            if r.endpoints[0] == "a:1":
                event = CompletionEvent(
                    request_id=f"r{i}", model=pool, endpoint="a:1", status_code=200, stream=False
                )
                await nc.publish(subjects.COMPLETIONS, encode(event))
        await nc.flush()
        await asyncio.sleep(0.1)
        nxt = [(await ask(nc, pool)).endpoints[0] for _ in range(5)]
        assert nxt == ["a:1"] * 5
        # debug.enabled is off: the debug header gets no scores (no oracle)
        assert (await ask(nc, pool, headers={"x-pointsman-debug": "1"})).scores == {}
    finally:
        await nc.close()


async def test_shedding_and_prefill_over_the_bus(nats_url: str, start_picker: StartPicker) -> None:
    start_picker({"objectives": {"batch": -1, "chat": 5}}, extra={"debug": {"enabled": True}})
    nc = await nats.connect(nats_url)
    try:
        pool = f"m-{uuid.uuid4().hex[:6]}"
        now = time.time()
        snap = PoolSnapshot(
            pool=pool,
            collector="test",
            published_at=now,
            endpoints=[
                EndpointMetrics(
                    address="p:1", scraped_at=now, waiting=9, labels={"role": "prefill"}
                ),
                EndpointMetrics(
                    address="d:1", scraped_at=now, kv_usage=0.97, labels={"role": "decode"}
                ),
            ],
        )
        await nc.publish(subjects.metrics(pool), encode(snap))
        await nc.flush()
        deadline = time.monotonic() + 60
        while (await ask(nc, pool)).status is PickStatus.UNKNOWN_MODEL:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        shed = await ask(nc, pool, headers={"x-llm-d-inference-objective": "batch"})
        assert (shed.status, shed.reason) == (PickStatus.SHED, "saturated")
        kept = await ask(
            nc, pool, headers={"x-llm-d-inference-objective": "chat"}, prompt="hello " * 40
        )
        assert kept.status is PickStatus.OK
        assert kept.endpoints == ["d:1"] and kept.prefill == "p:1"
        debug = await ask(nc, pool, headers={"x-pointsman-debug": "1"})
        assert "d:1/queue-scorer" in debug.scores
    finally:
        await nc.close()
