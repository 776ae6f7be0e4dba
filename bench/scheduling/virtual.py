"""Engines in virtual time: the simulator's own engine scheduler (:mod:`pointsman.sim.scheduler`)
driven by an event heap, as ``bench.scheduling.predictor_fit`` and ``bench.scheduling.route_sim``
run it. An engine runs one step at a time; the end of a step is an event ``(time, STEP_ENDS,
engine index)`` on the caller's heap."""

from __future__ import annotations

import heapq
from typing import Any, Protocol

from pointsman.sim.scheduler import Scheduler

#: The event kind of a step's end (the callers number their other kinds after it).
STEP_ENDS = 0


class Stepping(Protocol):
    """An engine of a virtual-time run: its scheduler and the step it runs (``None``: idle)."""

    sched: Scheduler
    step: Any


def start_step(eng: Stepping, index: int, now: float, events: list[tuple[float, int, int]]) -> None:
    """Start ``eng``'s next step when it is idle and has work; its end goes on ``events``."""
    if eng.step is not None or not eng.sched.has_work():
        return
    step = eng.sched.schedule()
    if not step.items:
        return
    eng.step = step
    heapq.heappush(events, (now + eng.sched.step_duration(step), STEP_ENDS, index))
