"""bench.common.stats.percentile: the one percentile rule of the benchmarks' tables."""

from __future__ import annotations

import math

from bench.common.stats import percentile


def test_nearest_rank_on_the_n_minus_1_scale() -> None:
    data = [5.0, 1.0, 4.0, 2.0, 3.0]  # any order
    assert percentile(data, 0) == 1.0
    assert percentile(data, 50) == 3.0
    assert percentile(data, 90) == 5.0  # rank round(0.9 * 4) = 4
    assert percentile(data, 100) == 5.0
    assert percentile(range(101), 99) == 99


def test_empty_is_nan() -> None:
    assert math.isnan(percentile([], 50))
