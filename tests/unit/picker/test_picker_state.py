"""In-memory state: snapshot merging and in-flight bookkeeping."""

from __future__ import annotations

from pointsman.v1 import EndpointMetrics, PoolSnapshot
from pointsman_picker.state import InFlight, PoolStore


def snap(pool: str, *eps: EndpointMetrics) -> PoolSnapshot:
    return PoolSnapshot(pool=pool, collector="c", published_at=0.0, endpoints=list(eps))


def test_snapshots_from_two_collectors_merge() -> None:
    store = PoolStore()
    store.apply(snap("m", EndpointMetrics(address="a", scraped_at=1)), now=1)
    store.apply(snap("m", EndpointMetrics(address="b", scraped_at=1)), now=1)
    assert sorted(m.address for m in store.metrics("m") or []) == ["a", "b"]
    assert store.metrics("other") is None


def test_older_snapshot_does_not_roll_back() -> None:
    store = PoolStore()
    store.apply(snap("m", EndpointMetrics(address="a", scraped_at=2, waiting=5)), now=2)
    store.apply(snap("m", EndpointMetrics(address="a", scraped_at=1, waiting=1)), now=2)
    assert (store.metrics("m") or [])[0].waiting == 5
    # a failed scrape keeps its old scraped_at but must still mark the endpoint unhealthy
    store.apply(snap("m", EndpointMetrics(address="a", scraped_at=1, healthy=False)), now=3)
    assert not (store.metrics("m") or [])[0].healthy


def test_forget_endpoints_no_snapshot_names() -> None:
    store = PoolStore(forget_after_s=10)
    store.apply(snap("m", EndpointMetrics(address="a")), now=0)
    store.apply(snap("m", EndpointMetrics(address="b")), now=8)
    store.forget_old(now=12)  # snapshots went on for 8 s without "a": not yet
    assert sorted(m.address for m in store.metrics("m") or []) == ["a", "b"]
    store.apply(snap("m", EndpointMetrics(address="b")), now=11)
    assert store.forget_old(now=12) == [("m", "a")]
    assert [m.address for m in store.metrics("m") or []] == ["b"]


def test_no_snapshot_at_all_forgets_nothing() -> None:
    """Every collector gone: the last known endpoints stay, however long it lasts."""
    store = PoolStore(forget_after_s=10)
    store.apply(snap("m", EndpointMetrics(address="a"), EndpointMetrics(address="b")), now=0)
    assert store.forget_old(now=10_000) == []
    assert sorted(m.address for m in store.metrics("m") or []) == ["a", "b"]


def test_pending_counts_only_after_scrape() -> None:
    fl = InFlight(ttl_s=60)
    fl.add("r1", "m", "a", at=1.0)
    fl.add("r2", "m", "a", at=2.0)
    fl.add("r3", "m", "a", at=3.0)
    assert fl.pending("m", "a", since=1.5) == 2
    assert fl.pending("m", "b", since=0) == 0
    assert fl.release("r3")
    assert not fl.release("r3")
    assert fl.pending("m", "a", since=1.5) == 1


def test_freed_counts_completions_since_the_scrape_of_older_assignments() -> None:
    fl = InFlight(ttl_s=60)
    for i, at in enumerate((1.0, 1.2, 1.4, 3.0)):
        fl.add(f"r{i}", "m", "a", at=at)
    assert fl.release("r0", at=1.45)  # before the scrape at 2.0: the scrape did not count it
    assert fl.release("r1", at=2.5)  # counted by the scrape, gone since
    assert fl.release("r3", at=3.5)  # sent after the scrape: pending, not freed
    assert fl.release("r2")  # dropped without a completion (TTL): not freed
    assert fl.freed("m", "a", since=2.0) == 1
    assert fl.freed("m", "b", since=2.0) == 0
    assert fl.freed("m", "a", since=3.0) == 1  # r3, seen by a scrape at 3.0, gone since
    assert fl.freed("m", "a", since=4.0) == 0  # a newer scrape counts nothing of these
    fl.forget_endpoint("m", "a")
    assert fl.freed("m", "a", since=0.0) == 0


def test_in_flight_expires_after_ttl() -> None:
    fl = InFlight(ttl_s=10)
    fl.add("r1", "m", "a", at=0.0)
    fl.add("r2", "m", "a", at=5.0)
    assert fl.expire(now=12.0) == 1
    assert len(fl) == 1
    assert fl.pending("m", "a", since=0) == 1
