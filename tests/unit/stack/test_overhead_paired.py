"""bench.overhead.paired: every variant gets the same load, interleaved, and the change is read
per restart against the baseline of the same restart."""

from __future__ import annotations

import itertools
import math

import pytest

from bench.common.load import interleaved_schedule
from bench.overhead.paired import summarise


def test_each_variant_gets_the_rate_evenly_spaced_and_the_order_rotates() -> None:
    sched = interleaved_schedule(rate=10, duration=2, variants=3)
    assert len(sched) == 60
    for k in range(3):
        assert sum(1 for _, v in sched if v == k) == 20
    offsets = [t for t, _ in sched]
    assert offsets == sorted(offsets)
    gaps = {round(b - a, 9) for a, b in itertools.pairwise(offsets)}
    assert gaps == {round(0.1 / 3, 9)}  # one request every 1 / (rate * variants) s
    firsts = [v for t, v in sched[::3]]
    assert firsts[:4] == [0, 1, 2, 0]  # no variant always first after the tick's quiet gap


def test_changes_are_read_per_restart_against_that_restarts_baseline() -> None:
    p50s = {"base": [10.0, 12.0, 11.0], "new": [10.2, 12.3, 11.1]}
    pooled = {"base": 11.0, "new": 11.25}
    out = summarise(p50s, pooled, "base")
    assert set(out) == {"new"}
    assert out["new"]["changes_ms"] == pytest.approx([0.2, 0.3, 0.1])
    assert out["new"]["change_mean_ms"] == pytest.approx(0.2)
    assert out["new"]["change_se_ms"] == pytest.approx(0.1 / math.sqrt(3))
    assert out["new"]["pooled_change_ms"] == pytest.approx(0.25)
    one = summarise({"base": [1.0], "new": [1.5]}, {"base": 1.0, "new": 1.5}, "base")
    assert math.isnan(one["new"]["change_se_ms"])
