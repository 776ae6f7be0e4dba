"""The percentile the benchmarks report (one rule for every table that uses it).

The nearest rank on the ``(n - 1)`` scale: ``q`` = 0 is the smallest value, 100 the largest, 50
the middle one (the upper middle of an even count rounds half to even). ``bench.scheduling``'s
tables use their own rule (:func:`bench.scheduling.report.pct`, the ceiling rank), kept apart so
that its committed figures stay comparable.
"""

from __future__ import annotations

from collections.abc import Iterable


def percentile(data: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``data``; NaN when it is empty."""
    s = sorted(data)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]
