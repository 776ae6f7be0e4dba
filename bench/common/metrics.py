"""Reading one sample of a Prometheus text page (a service's ``/metrics``)."""

from __future__ import annotations


def sample(text: str, name: str) -> float:
    """The value of the first sample of ``text`` named ``name`` (a bare metric name, or one
    with its labels: ``name{lane="main"}``); 0 when there is none."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0
