"""``pointsman.runtime.Children``: the same children as ``labels()``, counted in the registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from pointsman.runtime import Children


def test_children_are_the_metrics_own_and_count_in_its_registry() -> None:
    registry = CollectorRegistry()
    picks = Counter("t_picks", "picks", ["pool", "endpoint"], registry=registry)
    seconds = Histogram("t_seconds", "seconds", ["service"], registry=registry)
    child = Children()
    assert child(picks, "m", "a") is picks.labels("m", "a")
    child(picks, "m", "a").inc()
    child(picks, "m", "a").inc(2)
    child(picks, "m", "b").inc()
    child(seconds, "picker").observe(0.5)
    assert registry.get_sample_value("t_picks_total", {"pool": "m", "endpoint": "a"}) == 3
    assert registry.get_sample_value("t_picks_total", {"pool": "m", "endpoint": "b"}) == 1
    assert registry.get_sample_value("t_seconds_count", {"service": "picker"}) == 1


def test_past_its_limit_it_still_answers_without_remembering() -> None:
    registry = CollectorRegistry()
    picks = Counter("t_more", "picks", ["pool"], registry=registry)
    child = Children(limit=2)
    for name in ("a", "b", "c", "c"):
        child(picks, name).inc()
    assert registry.get_sample_value("t_more_total", {"pool": "c"}) == 2
    assert len(child._found) == 2
