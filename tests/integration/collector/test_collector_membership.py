"""Two in-process replicas on a real NATS: agreement on members, and a warning when their
discovered endpoints differ for long."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import generate_latest

from pointsman.bus import NatsConfig
from pointsman_collector import membership
from pointsman_collector.app import Collector
from pointsman_collector.config import CollectorConfig
from pointsman_collector.core.endpoints import parse_pools
from tests.helpers import procs

pytestmark = pytest.mark.integration


def _cfg(unique: str, name: str) -> CollectorConfig:
    return CollectorConfig.model_validate(
        {
            "id": name,
            "http_port": procs.free_port(),
            "sharding": {"subject": f"test.{unique}.hb", "heartbeat_ms": 50, "lease_ms": 200},
            "latest": {"enabled": False},
        }
    )


async def test_replicas_with_different_views_are_reported(
    nats_url: str, unique: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(membership, "VIEW_GRACE_S", 0.3)
    a = Collector(_cfg(unique, "a"), nats=NatsConfig(url=nats_url), sources=[], http=False)
    b = Collector(_cfg(unique, "b"), nats=NatsConfig(url=nats_url), sources=[], http=False)
    await a.start()
    await b.start()
    try:
        same = parse_pools({f"p-{unique}": ["127.0.0.1:1", "127.0.0.1:2"]})
        a.report("test", same)
        b.report("test", same)
        deadline = time.monotonic() + 60
        while not (a._members == b._members == ["a", "b"]):
            assert time.monotonic() < deadline, (a._members, b._members)
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        assert a._membership is not None and a._membership.disagreeing == 0

        caplog.set_level(logging.WARNING, logger="pointsman_collector.membership")
        b.report("test", same[:1])  # b lost an endpoint that a still has
        deadline = time.monotonic() + 60
        # the count follows the clock; the warning comes with the next heartbeat after that
        while a._membership.disagreeing == 0 or not any(
            "has discovered other endpoints" in r.message for r in caplog.records
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        exposition = generate_latest(a.telemetry.registry).decode()
        assert "pointsman_collector_members_disagreeing 1.0" in exposition
    finally:
        await b.stop()
        await a.stop()
