"""From a bus :class:`PickRequest` to the core's :class:`Request`: pool, adapter, priority."""

from __future__ import annotations

from collections.abc import Mapping

from pointsman.v1 import PickRequest
from pointsman_picker.core.objectives import Objectives
from pointsman_picker.core.slo import slo_of
from pointsman_picker.core.types import Request

SESSION_HEADER = "x-session-id"
#: The Inference Extension's objective header; llm-d's older name is read when it is absent.
OBJECTIVE_HEADER = "x-gateway-inference-objective"
LLMD_OBJECTIVE_HEADER = "x-llm-d-inference-objective"
PRIORITY_HEADER = "x-pointsman-priority"
DEBUG_HEADER = "x-pointsman-debug"


def priority_of(
    headers: Mapping[str, str], objectives: Objectives | Mapping[str, int], default: int = 0
) -> tuple[int, str | None]:
    """(priority, objective): our direct priority header wins, then a known objective.

    A malformed priority header or an unknown objective falls back to ``default`` rather than
    failing the request: shedding is a policy, not validation.
    """
    if not isinstance(objectives, Objectives):
        objectives = Objectives(objectives)
    objective = headers.get(OBJECTIVE_HEADER) or headers.get(LLMD_OBJECTIVE_HEADER) or None
    direct = headers.get(PRIORITY_HEADER)
    if direct is not None:
        try:
            return int(direct.strip()), objective
        except ValueError:
            pass
    known = objectives.priority(objective) if objective is not None else None
    if known is not None:
        return known, objective
    return default, objective


def to_request(
    pick: PickRequest,
    *,
    adapters: Mapping[str, str],
    objectives: Objectives | Mapping[str, int],
    default_priority: int = 0,
    slos: Mapping[str, tuple[float | None, float | None]] | None = None,
) -> Request:
    pool = adapters.get(pick.model, pick.model)
    priority, objective = priority_of(pick.headers, objectives, default_priority)
    slo_ttft, slo_tpot = slo_of(pick.headers, objective, slos or {})
    return Request(
        request_id=pick.request_id,
        model=pick.model,
        pool=pool,
        adapter=pick.model if pool != pick.model else None,
        prompt=pick.prompt,
        session=pick.session or pick.headers.get(SESSION_HEADER) or None,
        priority=priority,
        objective=objective,
        subset=None if pick.subset is None else frozenset(pick.subset),
        max_endpoints=pick.max_endpoints,
        debug=bool(pick.headers.get(DEBUG_HEADER)),
        slo_ttft_ms=slo_ttft,
        slo_tpot_ms=slo_tpot,
    )
