"""Bus handlers: take the decoded message, ask the scheduler, return the reply. Nothing else.

Each method is a FastStream handler of one route of :mod:`pointsman.v1.routes` (the app
declares the subscribers): the route's codec has decoded the body before the call, and encodes
the returned reply after it. A message that did not decode is counted and, for a pick, answered
(``no_endpoints`` with the reason) so the shim does not wait for its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from opentelemetry.trace import SpanKind

from pointsman import tracing
from pointsman.bus import Received, encode
from pointsman.runtime import cancel_and_wait
from pointsman.v1 import (
    CompletionEvent,
    ModelsReply,
    ModelsRequest,
    PickReply,
    PickRequest,
    PickStatus,
    PoolSnapshot,
    routes,
)
from pointsman.v1.policy import InferencePolicy
from pointsman.v1.routes import Route
from pointsman_picker.core.request import DEBUG_HEADER
from pointsman_picker.flow import FlowControl, Waiter
from pointsman_picker.scheduler import Scheduler

log = logging.getLogger(__name__)
T = TypeVar("T")
_tracer = tracing.tracer("pointsman_picker")


class Handlers:
    def __init__(
        self, scheduler: Scheduler, *, debug: bool = False, flow: FlowControl | None = None
    ) -> None:
        """``debug``: the ``debug.enabled`` config; without it the debug header is ignored.
        ``flow``: flow control (a saturated pool's requests wait in it); ``None``: picks answer
        at once."""
        self._s = scheduler
        self._t = scheduler.telemetry
        self._debug = debug
        self._flow = flow
        #: Replies of waiting requests, sent when flow control dispatches or drops them.
        self._later: set[asyncio.Task[None]] = set()

    async def pick(self, msg: Received[PickRequest]) -> PickReply | None:
        """The reply; ``None`` when the request waits in flow control (the reply is sent then,
        so the subscriber takes the next request meanwhile)."""
        start = time.perf_counter()
        req = msg.body
        if req is not None and not self._debug:
            req.headers.pop(DEBUG_HEADER, None)  # no scores unless debug.enabled
        if req is None:
            self._t.bad_messages.labels(routes.PICK.subject).inc()
            log.warning("bad pick request: %s", msg.error)
            reply = PickReply(
                status=PickStatus.NO_ENDPOINTS,
                reason=f"invalid pick request: {msg.error}",
                picker=self._s.config.replica_id,
            )
        elif tracing.enabled():
            return await self._later_or_now(msg, self._traced_pick(req, msg, start))
        else:
            got = self._decide(req)
            self._t.pick_seconds.observe(time.perf_counter() - start)
            if isinstance(got, PickReply):
                return got
            return await self._later_or_now(msg, self._wait(got))
        self._t.pick_seconds.observe(time.perf_counter() - start)
        return reply

    async def _later_or_now(
        self, msg: Received[PickRequest], reply: Coroutine[Any, Any, PickReply]
    ) -> PickReply | None:
        """Answer ``msg`` when ``reply`` finishes, from a task of its own (``None`` now)."""
        raw = msg.raw
        if raw is None or not raw.reply:  # the in-memory test broker: it takes the return value
            return await reply

        async def answer() -> None:
            got = await reply
            with contextlib.suppress(Exception):  # the asker may be gone: not an error
                await raw.respond(encode(got))

        task = asyncio.create_task(answer())
        self._later.add(task)
        task.add_done_callback(self._later.discard)
        return None

    async def close(self) -> None:
        """Give up on the requests still waiting (their shims fall back to their failure mode)."""
        await cancel_and_wait(list(self._later))

    def _decide(self, req: PickRequest) -> PickReply | Waiter:
        return self._s.pick(req) if self._flow is None else self._flow.try_pick(req)

    async def _wait(self, waiter: Waiter) -> PickReply:
        assert self._flow is not None
        return await self._flow.wait(waiter)

    async def _traced_pick(
        self, req: PickRequest, msg: Received[PickRequest], start: float
    ) -> PickReply:
        """The pick as a span of the request's trace (context from the NATS headers)."""
        with _tracer.start_as_current_span(
            "pointsman.picker.pick",
            context=tracing.extract(msg.headers),
            kind=SpanKind.SERVER,
            attributes={"pointsman.request_id": req.request_id, "pointsman.model": req.model},
        ) as span:
            got = self._decide(req)
            self._t.pick_seconds.observe(time.perf_counter() - start)
            if isinstance(got, Waiter):
                span.set_attribute("pointsman.queued", True)
                reply = await self._wait(got)
            else:
                reply = got
            span.set_attribute("pointsman.pick_status", str(reply.status.value))
            span.set_attribute("pointsman.endpoints", reply.endpoints)
            span.set_attribute("pointsman.picker", reply.picker)
            if reply.scores:
                span.set_attribute("pointsman.score_best", float(max(reply.scores.values())))
                span.set_attribute("pointsman.candidates", len(reply.scores))
            if reply.reason:
                span.set_attribute("pointsman.reason", reply.reason)
            return reply

    async def models(self, msg: Received[ModelsRequest]) -> ModelsReply:
        if msg.body is None:
            self._t.bad_messages.labels(routes.MODELS.subject).inc()
        return self._s.models()

    async def snapshot(self, msg: Received[PoolSnapshot]) -> None:
        if (snap := self._body(msg, routes.SNAPSHOTS, "snapshot")) is None:
            return
        self._s.on_snapshot(snap)
        if self._flow is not None:
            self._flow.on_snapshot(snap.pool)

    async def policy(self, msg: Received[InferencePolicy]) -> None:
        if (policy := self._body(msg, routes.POLICY, "policy message")) is not None:
            self._s.on_policy(policy)

    async def completion(self, msg: Received[CompletionEvent]) -> None:
        if (event := self._body(msg, routes.COMPLETIONS, "completion event")) is None:
            return
        self._s.on_completion(event)
        if self._flow is not None:
            self._flow.on_completion(event)

    def _body(self, msg: Received[T], route: Route[Any, Any], what: str) -> T | None:
        """The event's body; ``None`` for one that did not decode (counted and logged)."""
        if msg.body is None:
            self._t.bad_messages.labels(route.subject).inc()
            log.warning("bad %s on %s: %s", what, msg.subject, msg.error)
        return msg.body
