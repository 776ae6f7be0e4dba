"""Reading Envoy's admin counters, so a benchmark can tell which requests skipped the shim.

An ext_proc filter with ``failure_mode_allow`` passes a request on unprocessed when it cannot
open or keep its stream: the shim down or too slow, or the shim cluster's circuit breaker full.
Such a request is fast and succeeds, so a latency or throughput table that does not count them
flatters the path it measures: with Envoy's default limit of 1,024 concurrent streams on the
ext_proc cluster and a server that left its streams for Envoy to end, 97 % of a closed-loop
run's ext_proc streams failed open.
"""

from __future__ import annotations

import json
import urllib.request


def counter_sum(admin: str, suffix: str) -> int:
    """The sum of every counter of Envoy's admin at ``admin`` (``http://host:port``) whose name
    ends with ``suffix``, e.g. ``.failure_mode_allowed`` for every ext_proc filter's."""
    with urllib.request.urlopen(f"{admin}/stats?format=json&usedonly", timeout=5) as r:
        data = json.loads(r.read())
    return sum(
        int(s["value"])
        for s in data.get("stats", [])
        if isinstance(s.get("value"), int) and s["name"].endswith(suffix)
    )


def failed_open(admin: str) -> int:
    """ext_proc streams that failed open so far (their requests went on without the server)."""
    return counter_sum(admin, ".failure_mode_allowed")
