"""The engine loop of one simulated replica: one asyncio task that runs scheduler steps in time.

The loop keeps a simulated clock in wall-clock terms: each step ends ``duration * time_scale``
after the previous one, whatever the sleeps overshoot, so throughput is right on average. It
sleeps only when the next step ends more than ``GRANULARITY`` away (short steps run back to back
and are delivered a little early), and when the process is too busy to keep up it lets the clock
slip rather than burst (at most ``MAX_LAG`` of catch-up). Handlers never get a task per token:
each request has one future that the loop resolves when there is something to send.
"""

from __future__ import annotations

import asyncio

from pointsman.runtime import cancel_and_wait
from pointsman.sim.config import SimConfig
from pointsman.sim.metrics import Metrics
from pointsman.sim.scheduler import ABORTED, RUNNING, WAITING, Scheduler, Seq, Step

GRANULARITY = 0.001
MAX_LAG = 0.05


class Engine:
    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        self.scale = config.time_scale
        self.sched = Scheduler(config)
        self.metrics = Metrics(config)
        self.steps = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop stepping and abort every request, so no handler waits on a dead engine."""
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        for seq in [*self.sched.running, *self.sched.waiting]:
            self.abort(seq)
            _wake(seq)

    def submit(self, seq: Seq) -> None:
        seq.arrival = asyncio.get_running_loop().time()
        self.sched.add(seq)
        self._wake.set()

    def abort(self, seq: Seq) -> None:
        if seq.status in (WAITING, RUNNING):
            self.sched.abort(seq)
            self.metrics.success["abort"] += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sched = self.sched
        clock = loop.time()
        while True:
            if not sched.has_work():
                self._wake.clear()
                await self._wake.wait()
                clock = loop.time()
                continue
            step = sched.schedule()
            if not step.items:  # nothing can run until something changes
                self._wake.clear()
                await self._wake.wait()
                continue
            now = loop.time()
            for s in step.admitted:
                if s.preemptions == 0:
                    self.metrics.queue_time.observe((now - s.arrival) / self.scale)
            if clock < now - MAX_LAG:
                clock = now - MAX_LAG
            clock += sched.step_duration(step) * self.scale
            delay = clock - now
            if delay > GRANULARITY:
                await asyncio.sleep(delay)
            elif delay <= 0:
                await asyncio.sleep(0)
            self.steps += 1
            self._deliver(step, loop.time())

    def _deliver(self, step: Step, now: float) -> None:
        progressed, finished = self.sched.complete(step)
        m, scale = self.metrics, self.scale
        for s in progressed:
            if s.first_token_at == 0.0:
                s.first_token_at = now
                m.ttft.observe((now - s.arrival) / scale)
            else:
                m.itl.observe((now - s.last_token_at) / scale)
            s.last_token_at = now
            if s.stream:
                _wake(s)
        for s in finished:
            m.finished(s.finish_reason, (now - s.arrival) / scale)
            if not s.stream:
                _wake(s)


def _wake(s: Seq) -> None:
    fut = s.waiter
    if fut is not None:
        s.waiter = None
        if not fut.done():
            fut.set_result(None)


async def wait_news(seq: Seq) -> None:
    """Wait until the engine has advanced ``seq`` (a token, or the end)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seq.waiter = fut
    await fut


__all__ = ["ABORTED", "Engine", "wait_news"]
