"""``session-affinity-scorer``: keep a session (the shim's identity, else ``x-session-id``) on the
endpoint it started on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field

from pointsman_picker.core.framework import Cycle, SessionBound, Update
from pointsman_picker.core.plugins._base import PARAMS, Affinity
from pointsman_picker.core.types import Endpoint


@dataclass(frozen=True, slots=True)
class SessionAffinityScorer(Affinity):
    """1 for the endpoint the session was last routed to (within ``ttl_s``), 0 for the others.

    The binding is refreshed on every routed request, so an active session never expires; if
    its endpoint is filtered out (unhealthy, saturated), the session moves to the new pick.
    """

    __pydantic_config__ = PARAMS
    ttl_s: Annotated[float, Field(gt=0)] = 600.0

    def score(self, cycle: Cycle, candidates: Sequence[Endpoint]) -> list[float]:
        sid = cycle.request.session
        bound = cycle.sessions(sid) if sid else None
        if bound is None or cycle.now - bound.at > self.ttl_s:
            return [0.0] * len(candidates)
        return [1.0 if e.address == bound.endpoint else 0.0 for e in candidates]

    def routed(self, cycle: Cycle, endpoint: Endpoint) -> list[Update]:
        sid = cycle.request.session
        if not sid:
            return []
        return [
            SessionBound(
                pool=cycle.request.pool,
                session=sid,
                endpoint=endpoint.address,
                at=cycle.now,
                ttl_s=self.ttl_s,
            )
        ]
