"""Flow control across picker replicas: the tenant counters meet in a real Redis, so a replica
orders its queue by the service every replica gave."""

from __future__ import annotations

import time

import pytest

from pointsman.redisconf import RedisSecurity
from pointsman.v1 import EndpointMetrics, PickRequest, PoolSnapshot
from pointsman_picker.config import PickerConfig
from pointsman_picker.core.flow import Head, next_head
from pointsman_picker.flow import CounterSync, FlowControl, Waiter
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry

pytestmark = pytest.mark.integration


def _replica(name: str) -> tuple[Scheduler, FlowControl]:
    config = PickerConfig(replica_id=name)
    s = Scheduler(config, Telemetry(), clock=time.time)
    return s, FlowControl(s, config.flow_control, shared=True)


def _snapshot(waiting: int) -> PoolSnapshot:
    now = time.time()
    return PoolSnapshot(
        pool="m", collector="t", published_at=now,
        endpoints=[EndpointMetrics(address="10.0.0.1:8000", scraped_at=now, waiting=waiting)],
    )  # fmt: skip


def _pick(rid: str, tenant: str) -> PickRequest:
    return PickRequest(
        request_id=rid, model="m", prompt="x" * 4000, max_wait_ms=10_000,
        headers={"x-pointsman-tenant": tenant},
    )  # fmt: skip


async def test_service_on_one_replica_orders_the_queue_of_another(redis_url: str) -> None:
    client_a = RedisSecurity().client(redis_url)
    client_b = RedisSecurity().client(redis_url)
    try:
        sa, a = _replica("a")
        sb, b = _replica("b")
        sync_a = CounterSync(client_a, "t-flow", a, 0.05)
        sync_b = CounterSync(client_b, "t-flow", b, 0.05)
        sa.on_snapshot(_snapshot(0))
        sb.on_snapshot(_snapshot(9))  # b's pool view: saturated
        for i in range(10):  # replica a serves "heavy" while it has room: 10 x 1000 tokens
            sa.on_snapshot(_snapshot(0))
            assert not isinstance(a.try_pick(_pick(f"h{i}", "heavy")), Waiter)
        await sync_a.sync()
        await sync_b.sync()
        assert b.counters.value("m", "heavy") == pytest.approx(10_000.0)
        # On b, heavy and light both wait; light has had no service anywhere.
        heavy = b.try_pick(_pick("h-b", "heavy"))
        light = b.try_pick(_pick("l-b", "light"))
        assert isinstance(heavy, Waiter) and isinstance(light, Waiter)
        # light joined while heavy waited: lifted to heavy's counter, not below it
        assert b.counters.value("m", "light") == pytest.approx(10_000.0)
        # ... and a's further service of heavy, seen through Redis, puts light first on b.
        sa.on_snapshot(_snapshot(0))
        assert not isinstance(a.try_pick(_pick("h10", "heavy")), Waiter)
        await sync_a.sync()
        await sync_b.sync()
        view = b.counters.view("m", {"heavy", "light"})
        assert view["heavy"] > view["light"]
        chosen = next_head([Head(0, "heavy", heavy.seq), Head(0, "light", light.seq)], view)
        assert chosen is not None and chosen.tenant == "light"
        sb.on_snapshot(_snapshot(4))  # room for one on b
        b.on_snapshot("m")
        assert light.future.done() and not heavy.future.done()
        # the counters in Redis are the sum of both replicas' charges
        await sync_b.sync()
        stored = await client_a.hgetall("t-flow:vtc:m")
        assert float(stored[b"heavy"]) == pytest.approx(11_000.0)
        assert float(stored[b"light"]) == pytest.approx(11_000.0)
    finally:
        await client_a.aclose()
        await client_b.aclose()


async def test_redis_down_keeps_counting_and_sends_later(redis_url: str) -> None:
    """An exchange that fails leaves the counts owed; the next one sends them."""
    _, a = _replica("a")
    dead = RedisSecurity().client("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    a.counters.add("m", "t", 5.0)
    with pytest.raises(Exception):  # noqa: B017 - whatever the client raises for a dead server
        await CounterSync(dead, "t-flow2", a, 0.05).sync()
    assert a.counters.value("m", "t") == 5.0
    live = RedisSecurity().client(redis_url)
    try:
        await CounterSync(live, "t-flow2", a, 0.05).sync()
        assert float(await live.hget("t-flow2:vtc:m", "t")) == 5.0
        assert a.counters.value("m", "t") == 5.0
    finally:
        await live.aclose()
        await dead.aclose()
