"""Discovery sources: each reports its whole current view, the app merges the views.

A source is anything with ``async run(report)`` that calls ``report(name, endpoints)`` whenever
its view changes (the full list each time, not a diff), and runs until cancelled. A source that
loses its backend keeps its last view rather than reporting an empty one: losing the API server
must not make every endpoint vanish from the pickers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from pointsman_collector.core.endpoints import Endpoint

Report = Callable[[str, Sequence[Endpoint]], None]


class Source(Protocol):
    name: str

    async def run(self, report: Report) -> None: ...
