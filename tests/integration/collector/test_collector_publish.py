"""The collector against a real nats-server and real HTTP /metrics servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import pytest

from pointsman.bus import NatsConfig
from pointsman.v1 import PoolSnapshot, decode, subjects
from pointsman_collector.app import Collector
from pointsman_collector.config import CollectorConfig
from pointsman_collector.core.endpoints import parse_pools
from tests.helpers.procs import free_port

pytestmark = pytest.mark.integration


def config(unique: str, **overrides: object) -> CollectorConfig:
    data: dict[str, object] = {
        "interval_ms": 50,
        "timeout_ms": 300,
        "id": f"c-{unique}",
        "http_port": free_port(),
        "sharding": {"subject": f"test.{unique}.heartbeat", "heartbeat_ms": 50, "lease_ms": 200},
        "latest": {"bucket": f"metrics-{unique}"},
    }
    data.update(overrides)
    return CollectorConfig.model_validate(data)


class Watcher:
    """Collects snapshots of one pool and waits for one that satisfies a condition."""

    def __init__(self) -> None:
        self.snaps: list[PoolSnapshot] = []
        self._event = asyncio.Event()

    async def cb(self, msg: object) -> None:
        self.snaps.append(decode(msg.data, PoolSnapshot))  # type: ignore[attr-defined]
        self._event.set()

    async def wait_for(
        self, cond: Callable[[PoolSnapshot], bool], timeout: float = 60
    ) -> PoolSnapshot:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for snap in reversed(self.snaps):
                if cond(snap):
                    return snap
            self._event.clear()
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await self._event.wait()
            except TimeoutError:
                break
        last = self.snaps[-1] if self.snaps else None
        raise AssertionError(f"no matching snapshot in {timeout}s; last: {last}")


async def test_scrapes_publishes_and_marks_dead_endpoints(
    nats_url: str, fleet: object, unique: str
) -> None:
    a = await fleet.add(waiting=3, running=5, kv=0.25)  # type: ignore[attr-defined]
    b = await fleet.add(fixture="sglang.txt", waiting=1, running=2, kv=0.5)  # type: ignore[attr-defined]
    dead = f"127.0.0.1:{free_port()}"
    pool = f"meta-llama/Llama-3.1-8B-{unique}"
    endpoints = parse_pools(
        {pool: [a.address, {"address": b.address, "labels": {"role": "decode"}}, dead]}
    )
    collector = Collector(config(unique), nats=NatsConfig(url=nats_url), sources=[])
    nc = await nats.connect(nats_url)
    watcher = Watcher()
    await nc.subscribe(subjects.metrics(pool), cb=watcher.cb)
    await collector.start()
    try:
        collector.report("test", endpoints)
        snap = await watcher.wait_for(
            lambda s: sum(e.healthy for e in s.endpoints) == 2 and len(s.endpoints) == 3
        )
        by = {e.address: e for e in snap.endpoints}
        assert (by[a.address].waiting, by[a.address].running, by[a.address].kv_usage) == (
            3,
            5,
            0.25,
        )
        assert by[a.address].engine == "vllm" and by[a.address].block_size == 16
        assert by[a.address].lora_running == ["sql-lora", "tool-lora"]
        assert (by[b.address].engine, by[b.address].waiting, by[b.address].kv_usage) == (
            "sglang",
            1,
            0.5,
        )
        assert by[b.address].labels == {"role": "decode"}
        assert not by[dead].healthy and by[dead].error and by[dead].stale
        assert snap.collector == f"c-{unique}" and snap.members == [f"c-{unique}"]
        assert time.time() - by[a.address].scraped_at < 5

        # Values follow the engine; an endpoint that starts failing is kept, marked unhealthy.
        a.waiting = 42
        b.status = 500
        snap = await watcher.wait_for(
            lambda s: (
                any(e.waiting == 42 for e in s.endpoints)
                and any(e.address == b.address and not e.healthy for e in s.endpoints)
            )
        )
        eb = next(e for e in snap.endpoints if e.address == b.address)
        assert eb.error == "HTTP 500" and eb.waiting == 1 and eb.scraped_at > 0

        # A late joiner reads the latest state from the KV bucket at once.
        js = nc.jetstream()
        kv = await js.key_value(f"metrics-{unique}")
        # As the README tells pickers: a watch delivers the current values, then None.
        kv_watch = await kv.watch(f"{subjects.token(pool)}.*", ignore_deletes=True)
        entries = []
        async for entry in kv_watch:
            if entry is None:
                break
            entries.append(entry)
        await kv_watch.stop()  # type: ignore[no-untyped-call]
        assert [e.key for e in entries] == [f"{subjects.token(pool)}.c-{unique}"]
        latest = decode(entries[0].value, PoolSnapshot)
        assert latest.pool == pool and len(latest.endpoints) == 3

        # An endpoint removed from discovery leaves the snapshot.
        collector.report("test", endpoints[:1])
        await watcher.wait_for(lambda s: [e.address for e in s.endpoints] == [a.address])
    finally:
        await collector.stop()
        await nc.close()


async def test_slow_endpoint_does_not_delay_the_others(
    nats_url: str, fleet: object, unique: str
) -> None:
    from aiohttp import web

    fast = await fleet.add(waiting=1)  # type: ignore[attr-defined]

    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/metrics", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    slow = f"127.0.0.1:{runner.addresses[0][1]}"
    pool = f"slow-{unique}"
    collector = Collector(
        config(unique, timeout_ms=1000), nats=NatsConfig(url=nats_url), sources=[]
    )
    nc = await nats.connect(nats_url)
    watcher = Watcher()
    await nc.subscribe(subjects.metrics(pool), cb=watcher.cb)
    await collector.start()
    try:
        collector.report("test", parse_pools({pool: [fast.address, slow]}))
        # Before the slow one even times out, the fast one is scraped tick after tick.
        await watcher.wait_for(lambda s: any(e.healthy for e in s.endpoints))
        hits = fast.hits
        await watcher.wait_for(lambda s: fast.hits >= hits + 5)
        snap = await watcher.wait_for(
            lambda s: any(e.address == slow and e.error == "timeout" for e in s.endpoints)
        )
        assert next(e for e in snap.endpoints if e.address == fast.address).healthy
    finally:
        release.set()
        await collector.stop()
        await nc.close()
        await runner.cleanup()


def marked(collector: Collector, reason: str) -> float:
    """``pointsman_collector_marked_unhealthy_total{reason}`` of ``collector``."""
    registry = collector.telemetry.registry
    name = "pointsman_collector_marked_unhealthy_total"
    return registry.get_sample_value(name, {"reason": reason}) or 0.0


async def test_one_slow_scrape_keeps_a_replica_a_refused_connection_does_not(
    nats_url: str, fleet: object, unique: str
) -> None:
    """Issue 12: one /metrics answer slower than the timeout (real vLLM under load) must not
    mark a serving replica unhealthy; a refused connection (the replica is gone) must at once."""
    a = await fleet.add(waiting=2)  # type: ignore[attr-defined]
    runner = fleet.runners[-1]  # type: ignore[attr-defined]
    pool = f"flaky-{unique}"
    cfg = config(unique, timeout_ms=300, unhealthy_after=3, sharding={"enabled": False})
    collector = Collector(cfg, nats=NatsConfig(url=nats_url), sources=[])
    nc = await nats.connect(nats_url)
    watcher = Watcher()
    await nc.subscribe(subjects.metrics(pool), cb=watcher.cb)
    await collector.start()
    try:
        collector.report("test", parse_pools({pool: [a.address]}))
        await watcher.wait_for(lambda s: bool(s.endpoints) and s.endpoints[0].healthy)
        # Two scrapes in a row time out (300 ms; a timed-out scrape is retried at once, so one
        # alone would be answered before the snapshot is built), the next ones answer.
        a.delay_s, a.slow = 1.5, 2
        timed_out = await watcher.wait_for(
            lambda s: bool(s.endpoints) and s.endpoints[0].error == "timeout"
        )
        assert timed_out.endpoints[0].healthy
        await watcher.wait_for(
            lambda s: bool(s.endpoints) and s.endpoints[0].error is None and s is not timed_out
        )
        since = watcher.snaps.index(timed_out)
        assert all(s.endpoints[0].healthy for s in watcher.snaps[since:])
        assert marked(collector, "failures") == 0

        await runner.cleanup()  # nothing listens any more: refused
        refused = await watcher.wait_for(
            lambda s: (
                bool(s.endpoints) and (s.endpoints[0].error or "").startswith("connect failed")
            )
        )
        first = next(
            s
            for s in watcher.snaps
            if (s.endpoints and (s.endpoints[0].error or "").startswith("connect failed"))
        )
        assert not first.endpoints[0].healthy and not refused.endpoints[0].healthy
        assert marked(collector, "connect") == 1
        assert marked(collector, "failures") == 0
    finally:
        await collector.stop()
        await nc.close()


async def test_big_pool_is_split_and_vanished_parts_are_emptied(
    nats_url: str, fleet: object, unique: str
) -> None:
    engines = [await fleet.add(waiting=i) for i in range(6)]  # type: ignore[attr-defined]
    pool = f"big-{unique}"
    eps = parse_pools({pool: [e.address for e in engines]})
    # About 300 bytes per endpoint: a 1,000-byte limit needs several parts.
    cfg = config(unique, max_snapshot_bytes=1000, sharding={"enabled": False})
    collector = Collector(cfg, nats=NatsConfig(url=nats_url), sources=[])
    nc = await nats.connect(nats_url)
    latest: dict[str, PoolSnapshot] = {}
    watcher = Watcher()

    async def cb(msg: object) -> None:
        snap = decode(msg.data, PoolSnapshot)  # type: ignore[attr-defined]
        latest[snap.collector] = snap
        await watcher.cb(msg)

    await nc.subscribe(subjects.metrics(pool), cb=cb)
    await collector.start()

    def union() -> set[str]:
        return {e.address for s in latest.values() for e in s.endpoints if e.healthy}

    try:
        collector.report("test", eps)
        await watcher.wait_for(lambda s: union() == {e.address for e in engines})
        assert len(latest) > 1 and all(c.startswith(f"c-{unique}_p") for c in latest)
        # Fewer endpoints: fewer parts; the parts that vanish are published empty.
        collector.report("test", eps[:1])
        # Wait for the final state itself: on a busy machine a scrape can time out, and the
        # healthy union may match while a vanished part (its endpoints unhealthy) is not yet
        # published empty.
        await watcher.wait_for(
            lambda s: (
                union() == {engines[0].address}
                and sum(1 for p in latest.values() if p.endpoints) == 1
            )
        )
    finally:
        await collector.stop()
        await nc.close()


async def test_a_stop_that_lands_with_a_scrape_answer_still_ends_the_tick_loop(
    nats_url: str, fleet: object, unique: str
) -> None:
    """The cancel arrives in the same loop iteration as the answer the tick waits on.

    Python 3.11's ``asyncio.wait_for`` returned that answer and dropped the cancel, so the tick
    loop ran on and ``Collector.stop`` waited on it for ever (a CI run hung here for 300 s).
    """
    engine = await fleet.add()  # type: ignore[attr-defined]
    collector = Collector(
        config(unique, sharding={"enabled": False}), nats=NatsConfig(url=nats_url), sources=[]
    )
    await collector.start()
    [ticks] = [t for t in collector._tasks if t.get_name() == "collector-ticks"]
    assert collector._raw is not None
    raw = collector._raw
    answer = raw._on_result

    def answer_then_cancel(*args: object) -> None:
        answer(*args)  # type: ignore[arg-type]
        ticks.cancel()

    raw._on_result = answer_then_cancel
    try:
        collector.report("test", parse_pools({f"p-{unique}": [engine.address]}))
        done, _ = await asyncio.wait([ticks], timeout=60)
        assert done and ticks.cancelled(), "the tick loop ignored its cancel"
    finally:
        raw._on_result = answer
        await collector.stop()
