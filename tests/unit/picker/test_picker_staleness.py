"""The staleness policy: with no fresh metrics the picker serves from the last known endpoints.

A collector outage must not take routing down (issue 12): while any endpoint of a pool was last
seen healthy the picker never answers ``no_endpoints``, and it scores only what is still true
(prefix, in-flight), ignoring the stale queue and KV numbers.
"""

from __future__ import annotations

from prometheus_client import generate_latest

from pointsman.v1 import CompletionEvent, EndpointMetrics, PickRequest, PickStatus, PoolSnapshot
from pointsman_picker.config import PickerConfig
from pointsman_picker.scheduler import Scheduler
from pointsman_picker.telemetry import Telemetry


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scheduler(clock: Clock, **cfg: object) -> Scheduler:
    config = PickerConfig(replica_id="t", **cfg)  # type: ignore[arg-type]
    return Scheduler(config, Telemetry(), clock=clock)


def snap(*eps: EndpointMetrics) -> PoolSnapshot:
    return PoolSnapshot(pool="m", collector="c", published_at=0.0, endpoints=list(eps))


def pick(s: Scheduler, rid: str, prompt: str | None = None) -> tuple[PickStatus, list[str]]:
    reply = s.pick(PickRequest(request_id=rid, model="m", prompt=prompt))
    return reply.status, reply.endpoints


def test_fresh_endpoints_win_over_stale_ones() -> None:
    clock = Clock(1000.0)
    s = scheduler(clock, stale_after_ms=3000)
    s.on_snapshot(
        snap(
            EndpointMetrics(address="fresh:1", scraped_at=1000.0, waiting=4),
            EndpointMetrics(address="old:1", scraped_at=990.0, waiting=0),
        )
    )
    assert pick(s, "r1") == (PickStatus.OK, ["fresh:1"])


def test_collector_gone_serves_last_known_healthy_endpoints() -> None:
    clock = Clock(1000.0)
    s = scheduler(clock, stale_after_ms=3000)
    s.on_snapshot(
        snap(
            # the stale queue numbers must not matter any more: "busy" is as good as "idle"
            EndpointMetrics(address="busy:1", scraped_at=1000.0, waiting=50, kv_usage=0.99),
            EndpointMetrics(address="idle:1", scraped_at=1000.0, waiting=0),
            EndpointMetrics(address="down:1", scraped_at=1000.0, healthy=False),
        )
    )
    clock.now += 600.0  # ten minutes without a snapshot: longer than forget_after_s too
    s.housekeeping()
    firsts = []
    for i in range(6):
        status, endpoints = pick(s, f"r{i}")
        assert status is PickStatus.OK
        assert "down:1" not in endpoints
        firsts.append(endpoints[0])
    # in-flight is what still counts: without completions the picks alternate
    assert firsts.count("busy:1") == 3 and firsts.count("idle:1") == 3
    # a completion frees its endpoint: the next pick goes there
    s.on_completion(
        CompletionEvent(
            request_id="r5", model="m", endpoint=firsts[5], status_code=200, stream=False
        )
    )
    assert pick(s, "r6")[1][0] == firsts[5]

    text = generate_latest(s.telemetry.registry).decode()
    assert 'pointsman_picker_stale_endpoints{pool="m"} 3.0' in text
    assert 'pointsman_picker_stale_picks_total{pool="m"} 7.0' in text


def test_only_known_down_endpoints_give_no_endpoints() -> None:
    clock = Clock(1000.0)
    s = scheduler(clock)
    s.on_snapshot(snap(EndpointMetrics(address="down:1", scraped_at=990.0, healthy=False)))
    assert pick(s, "r1")[0] is PickStatus.NO_ENDPOINTS


def test_a_new_snapshot_ends_stale_mode() -> None:
    clock = Clock(1000.0)
    s = scheduler(clock, stale_after_ms=3000)
    s.on_snapshot(
        snap(
            EndpointMetrics(address="a:1", scraped_at=1000.0, waiting=9),
            EndpointMetrics(address="b:1", scraped_at=1000.0, waiting=0),
        )
    )
    clock.now += 60
    assert pick(s, "r1")[0] is PickStatus.OK
    s.on_snapshot(snap(EndpointMetrics(address="a:1", scraped_at=clock.now, waiting=9)))
    assert pick(s, "r2") == (PickStatus.OK, ["a:1"])  # the only fresh one
