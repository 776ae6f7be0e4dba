"""Invariants of the pure core over generated inputs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pointsman_collector.core import engines
from pointsman_collector.core.endpoints import Endpoint
from pointsman_collector.core.engines import Reading
from pointsman_collector.core.prom import Sample
from pointsman_collector.core.snapshot import (
    EndpointState,
    build_snapshots,
    record_error,
    record_ok,
)

FLOATS = st.floats(allow_nan=True, allow_infinity=False, width=64)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(FLOATS, max_size=4),
    st.lists(FLOATS, max_size=4),
    st.lists(FLOATS, min_size=1, max_size=4),
)
def test_readings_stay_in_range(
    waiting: list[float], running: list[float], kv: list[float]
) -> None:
    samples = {
        "vllm:num_requests_waiting": [
            Sample("w", {"engine": str(i)}, v) for i, v in enumerate(waiting)
        ],
        "vllm:num_requests_running": [
            Sample("r", {"engine": str(i)}, v) for i, v in enumerate(running)
        ],
        "vllm:kv_cache_usage_perc": [Sample("k", {"engine": str(i)}, v) for i, v in enumerate(kv)],
    }
    try:
        reading = engines.read(samples, engines.VLLM)
    except OverflowError:
        return  # sums of huge values; a real engine never reports 1e308 requests
    assert 0.0 <= reading.kv_usage <= 1.0
    assert reading.waiting >= 0 and reading.running >= 0


OUTCOMES = st.lists(st.sampled_from(["ok", "error", "none"]), min_size=0, max_size=30)


@settings(max_examples=200, deadline=None)
@given(OUTCOMES, st.integers(1, 4))
def test_snapshots_never_drop_a_tried_endpoint(outcomes: list[str], pools: int) -> None:
    states = []
    for i, outcome in enumerate(outcomes):
        state = EndpointState(Endpoint(f"pool-{i % pools}", f"10.0.0.{i}:8000"))
        if outcome == "ok":
            record_ok(state, Reading("vllm", waiting=i), 100.0, 1.0)
        elif outcome == "error":
            record_error(state, "boom", 1.0)
        states.append(state)
    snaps = build_snapshots(
        states, collector="c", now=100.2, stale_s=1.0, members=["c"], interval_ms=50
    )
    published = [(s.pool, e.address) for s in snaps.values() for e in s.endpoints]
    tried = [
        (st.endpoint.pool, st.endpoint.address)
        for st, outcome in zip(states, outcomes, strict=True)
        if outcome != "none"
    ]
    assert sorted(published) == sorted(tried)  # every endpoint tried is in, failed or not
    by_addr = {e.address: e for s in snaps.values() for e in s.endpoints}
    for state, outcome in zip(states, outcomes, strict=True):
        if outcome == "none":
            continue
        e = by_addr[state.endpoint.address]
        assert e.healthy == (outcome == "ok")
        assert (e.error is None) == (outcome == "ok")
        assert e.stale == (outcome != "ok")
