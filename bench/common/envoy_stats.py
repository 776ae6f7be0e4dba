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


def counters(admin: str) -> dict[str, int]:
    """Every counter and gauge of Envoy's admin at ``admin`` (``http://host:port``) by name."""
    with urllib.request.urlopen(f"{admin}/stats?format=json", timeout=5) as r:
        data = json.loads(r.read())
    return {
        s["name"]: int(s["value"]) for s in data.get("stats", []) if isinstance(s.get("value"), int)
    }


def counter_sum(admin: str, suffix: str) -> int:
    """The sum of the counters whose name ends with ``suffix``, e.g. ``.failure_mode_allowed``
    for every ext_proc filter's."""
    return sum(v for name, v in counters(admin).items() if name.endswith(suffix))


def failed_open(admin: str) -> int:
    """ext_proc streams that failed open so far (their requests went on without the server)."""
    return counter_sum(admin, ".failure_mode_allowed")
