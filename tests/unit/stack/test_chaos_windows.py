"""The chaos table's error windows, from made-up call records."""

from __future__ import annotations

from bench.chaos.scenario import Call, error_windows


def _call(start: float, end: float, ok: bool) -> Call:
    return Call(start, end, "m", False, 200 if ok else 503)


def test_no_failure_no_window() -> None:
    assert error_windows([_call(0, 1, True), _call(1, 2, True)]) == []


def test_failures_close_together_are_one_window_even_with_successes_between() -> None:
    calls = [_call(0.0, 0.1, False), _call(0.2, 0.3, True), _call(0.5, 0.9, False)]
    assert error_windows(calls) == [0.9]


def test_failures_far_apart_are_separate_windows() -> None:
    calls = [_call(0.0, 0.5, False), _call(5.0, 5.25, False)]
    assert error_windows(calls) == [0.5, 0.25]
