"""Static pools parsing and snapshot building."""

from __future__ import annotations

import pytest

from pointsman.v1 import PoolSnapshot, decode, encode
from pointsman_collector.core.endpoints import Endpoint, PoolsError, merge, parse_pools
from pointsman_collector.core.engines import Reading
from pointsman_collector.core.snapshot import (
    EndpointState,
    build_snapshots,
    record_error,
    record_ok,
    split,
)


def test_parse_pools_both_entry_shapes() -> None:
    eps = parse_pools(
        {
            "llama": [
                "127.0.0.1:8001",
                {"address": "127.0.0.1:8002", "labels": {"role": "decode"}},
            ],
            "qwen": [{"address": "10.0.0.1:30000", "engine": "sglang"}, "10.0.0.1:30000"],
            "empty": None,
        }
    )
    assert [(e.pool, e.address, dict(e.labels), e.engine) for e in eps] == [
        ("llama", "127.0.0.1:8001", {}, None),
        ("llama", "127.0.0.1:8002", {"role": "decode"}, None),
        ("qwen", "10.0.0.1:30000", {}, "sglang"),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["a"], "must map"),
        ({"m": "1.2.3.4:80"}, "must be a list"),
        ({"m": ["1.2.3.4"]}, "not 'host:port'"),
        ({"m": ["1.2.3.4:99999"]}, "not 'host:port'"),
        ({"m": [{"address": "1.2.3.4:80", "lables": {}}]}, "unknown keys"),
        ({"m": [{"labels": {}}]}, "address must be"),
    ],
)
def test_parse_pools_rejects(data: object, message: str) -> None:
    with pytest.raises(PoolsError, match=message):
        parse_pools(data)


def test_merge_keeps_first_source() -> None:
    a = [Endpoint("p", "1.1.1.1:1", {"src": "a"})]
    b = [Endpoint("p", "1.1.1.1:1", {"src": "b"}), Endpoint("q", "1.1.1.1:1")]
    merged = merge(a, b)
    assert merged["p|1.1.1.1:1"].labels == {"src": "a"}
    assert set(merged) == {"p|1.1.1.1:1", "q|1.1.1.1:1"}


def _state(addr: str, pool: str = "p") -> EndpointState:
    return EndpointState(Endpoint(pool, addr, {"role": "decode"}))


def test_snapshot_marks_failures_unhealthy_and_keeps_last_reading() -> None:
    ok, failed, never = _state("a:1"), _state("b:1"), _state("c:1")
    record_ok(ok, Reading("vllm", waiting=2, running=3, kv_usage=0.5, block_size=16), 100.0, 4.2)
    record_ok(failed, Reading("sglang", waiting=9), 99.0, 3.0)
    record_error(failed, "connect failed: refused", 1.0)
    snaps = build_snapshots(
        [never, failed, ok],
        collector="c1",
        now=100.5,
        stale_s=1.0,
        members=["c1"],
        interval_ms=50,
    )
    snap = snaps["p"]
    # c:1 was never tried: left out, so a hand-over does not mark it down in the pickers.
    assert [e.address for e in snap.endpoints] == ["a:1", "b:1"]
    a, b = snap.endpoints
    assert (a.healthy, a.waiting, a.running, a.kv_usage, a.scraped_at, a.stale) == (
        True,
        2,
        3,
        0.5,
        100.0,
        False,
    )
    assert a.labels == {"role": "decode"} and a.block_size == 16 and a.error is None
    assert (b.healthy, b.waiting, b.scraped_at, b.engine, b.error) == (
        False,
        9,
        99.0,
        "sglang",
        "connect failed: refused",
    )
    assert snap.members == ["c1"] and snap.interval_ms == 50


def test_failed_first_attempt_is_published_unhealthy_and_stale() -> None:
    st = _state("a:1")
    record_error(st, "timeout", 250.0)
    snap = build_snapshots([st], collector="c", now=1.0, stale_s=1.0, members=[], interval_ms=50)
    [e] = snap["p"].endpoints
    assert (e.healthy, e.scraped_at, e.stale, e.error) == (False, 0.0, True, "timeout")


def test_snapshot_stale_after_window() -> None:
    st = _state("a:1")
    record_ok(st, Reading("vllm"), 100.0, 1.0)
    snap = build_snapshots([st], collector="c", now=101.5, stale_s=1.0, members=[], interval_ms=50)
    assert snap["p"].endpoints[0].stale


def test_dropped_pools_get_an_empty_snapshot_and_encoding_roundtrips() -> None:
    st = _state("a:1", "p")
    record_ok(st, Reading("vllm", waiting=1), 1.0, 1.0)
    snaps = build_snapshots(
        [st],
        collector="c",
        now=1.0,
        stale_s=1.0,
        members=["c"],
        interval_ms=50,
        pools=["gone"],
    )
    assert snaps["gone"].endpoints == []
    again = decode(encode(snaps["p"]), PoolSnapshot)
    assert again == snaps["p"]


def test_split_keeps_every_endpoint_once_under_part_names() -> None:
    states = [_state(f"10.0.0.{i}:8000") for i in range(10)]
    for st in states:
        record_error(st, "refused", 1.0)
    snap = build_snapshots(
        states, collector="c1", now=1.0, stale_s=1.0, members=["c1"], interval_ms=50
    )["p"]
    parts = split(snap, 3)
    assert [p.collector for p in parts] == ["c1_p0", "c1_p1", "c1_p2"]
    assert [e.address for p in parts for e in p.endpoints] == [e.address for e in snap.endpoints]
    assert all(p.members == ["c1"] and p.pool == "p" for p in parts)
    assert len(split(snap, 50)) == 10


@pytest.mark.parametrize(
    ("errors", "healthy"),
    [
        (["timeout"], True),  # one slow scrape: still serving
        (["timeout", "HTTP 500"], True),
        (["timeout", "HTTP 500", "timeout"], False),  # three in a row: unhealthy
        (["connect failed: Connection refused"], False),  # nothing listens: at once
    ],
)
def test_unhealthy_after_consecutive_failures_or_refused(errors: list[str], healthy: bool) -> None:
    st = _state("a:1")
    record_ok(st, Reading("vllm"), 100.0, 1.0)
    for error in errors:
        record_error(st, error, 1.0, unhealthy_after=3)
    assert st.healthy is healthy and st.error == errors[-1]
    record_ok(st, Reading("vllm"), 101.0, 1.0)  # a success starts the count again
    record_error(st, "timeout", 1.0, unhealthy_after=3)
    assert st.healthy
