"""Bus handlers: decode the message, ask the scheduler, encode the reply. Nothing else."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind

from pointsman import tracing
from pointsman.v1 import (
    CompletionEvent,
    ModelsRequest,
    PickReply,
    PickRequest,
    PickStatus,
    PoolSnapshot,
    decode,
    encode,
    subjects,
)
from pointsman_picker.scheduler import Scheduler

log = logging.getLogger(__name__)
_tracer = tracing.tracer("pointsman_picker")


class Handlers:
    def __init__(self, scheduler: Scheduler) -> None:
        self._s = scheduler
        self._t = scheduler.telemetry

    async def pick(self, msg: Any) -> None:
        start = time.perf_counter()
        try:
            req = decode(msg.data, PickRequest)
        except msgspec.DecodeError as exc:
            self._t.bad_messages.labels(subjects.PICK).inc()
            log.warning("bad pick request: %s", exc)
            reply = PickReply(
                status=PickStatus.NO_ENDPOINTS,
                reason=f"invalid pick request: {exc}",
                picker=self._s.config.replica_id,
            )
        else:
            reply = self._traced_pick(req, msg.headers) if tracing.enabled() else self._s.pick(req)
        data = encode(reply)
        self._t.pick_seconds.observe(time.perf_counter() - start)
        if msg.reply:
            await msg.respond(data)
        self._t.decision_seconds.observe(time.perf_counter() - start)

    def _traced_pick(self, req: PickRequest, headers: dict[str, str] | None) -> PickReply:
        """The pick as a span of the request's trace (context from the NATS headers)."""
        with _tracer.start_as_current_span(
            "pointsman.picker.pick",
            context=tracing.extract(headers),
            kind=SpanKind.SERVER,
            attributes={"pointsman.request_id": req.request_id, "pointsman.model": req.model},
        ) as span:
            reply = self._s.pick(req)
            span.set_attribute("pointsman.pick_status", str(reply.status.value))
            span.set_attribute("pointsman.endpoints", reply.endpoints)
            span.set_attribute("pointsman.picker", reply.picker)
            if reply.scores:
                span.set_attribute("pointsman.score_best", float(max(reply.scores.values())))
                span.set_attribute("pointsman.candidates", len(reply.scores))
            if reply.reason:
                span.set_attribute("pointsman.reason", reply.reason)
            return reply

    async def models(self, msg: Any) -> None:
        try:
            decode(msg.data or b"{}", ModelsRequest)
        except msgspec.DecodeError:
            self._t.bad_messages.labels(subjects.MODELS).inc()
        if msg.reply:
            await msg.respond(encode(self._s.models()))

    async def snapshot(self, msg: Any) -> None:
        try:
            snap = decode(msg.data, PoolSnapshot)
        except msgspec.DecodeError as exc:
            self._t.bad_messages.labels(subjects.METRICS_ALL).inc()
            log.warning("bad snapshot on %s: %s", msg.subject, exc)
            return
        self._s.on_snapshot(snap)

    async def completion(self, msg: Any) -> None:
        try:
            event = decode(msg.data, CompletionEvent)
        except msgspec.DecodeError as exc:
            self._t.bad_messages.labels(subjects.COMPLETIONS).inc()
            log.warning("bad completion event: %s", exc)
            return
        self._s.on_completion(event)
