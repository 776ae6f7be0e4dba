"""The classify handler: take the decoded request, ask the models and the core, return the reply.

It is the FastStream handler of ``pointsman.v1.routes.CLASSIFY`` (the app declares the
subscriber; the route's codec decodes the request before the call and encodes the reply after).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.trace import SpanKind

from pointsman import tracing
from pointsman.bus import Received
from pointsman.v1.classify import ClassifyReply, ClassifyRequest
from pointsman_classifier import pii, sessions
from pointsman_classifier.batcher import Overloaded
from pointsman_classifier.cache.service import SemanticCache
from pointsman_classifier.config import ClassifierConfig
from pointsman_classifier.core import (
    Outputs,
    Signals,
    decide,
    prompt_text,
    safety_turns,
    top_category,
)
from pointsman_classifier.metrics import Metrics
from pointsman_classifier.turn_scores import TurnScores

log = logging.getLogger(__name__)
_tracer = tracing.tracer("pointsman_classifier")

#: Runs the models on one prompt text, by a deadline (``time.monotonic()`` seconds, or ``None``);
#: raises :class:`Overloaded` when it cannot answer in time.
Infer = Callable[[str, float | None], Awaitable[Outputs]]


class ClassifyHandler:
    """Turns one received ``ClassifyRequest`` into one ``ClassifyReply``; never raises.

    ``infer`` runs the models on one prompt text (through the batcher in the service);
    ``served`` gives the model names that can be routed to right now.
    """

    def __init__(
        self,
        cfg: ClassifierConfig,
        infer: Infer,
        served: Callable[[], frozenset[str]],
        metrics: Metrics,
        name: str = "",
        cache: SemanticCache | None = None,
        sessions: sessions.SessionStore | None = None,
        *,
        debug: bool = False,
    ) -> None:
        """``debug``: the ``debug.enabled`` config; without it the debug header is ignored."""
        self.cfg = cfg
        self.debug = debug
        self.cache = cache
        self.sessions = sessions
        self.infer = infer
        self.served = served
        self.metrics = metrics
        self.name = name
        self.turn_scores = TurnScores(cfg.jailbreak.turn_cache_size)

    async def __call__(self, msg: Received[ClassifyRequest]) -> ClassifyReply:
        if tracing.enabled():
            with _tracer.start_as_current_span(
                "pointsman.classifier.classify",
                context=tracing.extract(msg.headers),
                kind=SpanKind.SERVER,
            ) as span:
                reply = await self._handle(msg)
                _annotate(span, reply)
                return reply
        return await self._handle(msg)

    async def _handle(self, msg: Received[ClassifyRequest]) -> ClassifyReply:
        req = msg.body
        if req is None:
            self.metrics.errors.labels("bad_request").inc()
            log.warning("bad classify request: %s", msg.error)
            return ClassifyReply(model="", error="bad_request", classifier=self.name)
        if not self.debug:
            req.headers.pop(self.cfg.debug_header, None)
        # The caller's budget runs from now: a request it will have given up on is not worth
        # a place in a batch (the batcher refuses at once what it cannot finish in time).
        deadline = time.monotonic() + req.budget_ms / 1000 if req.budget_ms else None
        try:
            reply = await self.classify(req, deadline)
        except Overloaded as exc:
            self.metrics.errors.labels("overloaded").inc()
            self.metrics.shed.labels(exc.reason).inc()
            reply = ClassifyReply(model=req.model, error="overloaded", classifier=self.name)
        except Exception:
            log.exception("classify %s failed", req.request_id)
            self.metrics.errors.labels("internal").inc()
            reply = ClassifyReply(model=req.model, error="internal", classifier=self.name)
        return reply

    async def classify(self, req: ClassifyRequest, deadline: float | None = None) -> ClassifyReply:
        cfg = self.cfg
        text = prompt_text(req, cfg)
        outputs = await self.infer(text, deadline) if text.strip() else Outputs()
        jailbreak = await self._jailbreak(req, text, outputs.jailbreak, deadline)
        found: set[str] = set()
        if cfg.pii.enabled:
            # Every turn goes to the model, so every turn is checked for PII, not only the
            # classified text; the pattern set costs microseconds per kilobyte.
            for chunk in _all_text(req):
                found.update(f.entity_type for f in pii.find(chunk, cfg.pii.recognizers))
            found.update(f.entity_type for f in outputs.pii)
        signals = Signals(
            categories=outputs.categories,
            jailbreak=jailbreak,
            pii=frozenset(found),
        )
        keep, verdict = await self._session(req, signals)
        reply = decide(req, signals, cfg, self.served(), classifier=self.name, keep_category=keep)
        if verdict is not None:
            reply.headers[sessions.H_SESSION_MODEL] = verdict
            self.metrics.sessions.labels(verdict).inc()
            if reply.block is None and reply.category is not None and self.sessions is not None:
                assert req.session is not None
                self.sessions.remember(
                    req.session, sessions.Choice(category=reply.category, model=reply.model)
                )
        if self.cache is not None and reply.block is None:
            reply = await self.cache.lookup(req, reply, outputs.embedding)
        m = self.metrics
        for t in found:
            m.pii.labels(t).inc()
        if reply.block is not None:
            m.blocks.labels(reply.block.reason.split(":")[0]).inc()
            log.info("request %s blocked: %s", req.request_id, reply.block.reason)
        else:
            m.decisions.labels(
                reply.category or "", reply.model, "true" if reply.selected else "false"
            ).inc()
        return reply

    async def _jailbreak(
        self, req: ClassifyRequest, text: str, score: float | None, deadline: float | None
    ) -> float | None:
        """The request's safety score: the highest of the classified text's (``score``) and of
        each other turn the check reads (:func:`safety_turns`), those not seen before scored
        now, all at once through the batcher; ``None`` when the check is off or nothing was
        scored."""
        if not self.cfg.jailbreak.enabled:
            return None
        if score is None and text.strip():
            return None  # the models give no safety score (no branch or head loaded)
        if score is not None:
            self.turn_scores.put(text, score)
        turns = safety_turns(req, self.cfg, text)
        if not turns:
            return score
        scores = {t: self.turn_scores.get(t) for t in turns}
        missing = [t for t, s in scores.items() if s is None]
        self.metrics.safety_turns.labels("cached").inc(len(turns) - len(missing))
        if missing:
            self.metrics.safety_turns.labels("scored").inc(len(missing))
            outs = await asyncio.gather(*(self.infer(t, deadline) for t in missing))
            for t, out in zip(missing, outs, strict=True):
                scores[t] = out.jailbreak
                if out.jailbreak is not None:
                    self.turn_scores.put(t, out.jailbreak)
        found = [s for s in (score, *scores.values()) if s is not None]
        return max(found) if found else None

    async def _session(
        self, req: ClassifyRequest, signals: Signals
    ) -> tuple[str | None, str | None]:
        """(the category a session keeps, the verdict); (None, None) when no session applies."""
        if self.sessions is None or not req.session or req.model not in self.cfg.auto_models:
            return None, None
        previous = None
        if req.follow_up:
            previous, answered = await self.sessions.get(req.session)
            if not answered:
                return None, "unavailable"
        fresh, _, _ = top_category(self.cfg, signals.categories)
        margin = self.cfg.sessions.margin
        return sessions.stick(previous, fresh, signals.categories, margin)


def _all_text(req: ClassifyRequest) -> list[str]:
    texts = [m.content for m in req.messages if m.content]
    if req.prompt:
        texts.append(req.prompt)
    return texts


def _annotate(span: Any, reply: ClassifyReply) -> None:
    """Decision attributes on the span (never prompt text)."""
    span.set_attribute("pointsman.model", reply.model)
    span.set_attribute("pointsman.selected", reply.selected)
    if reply.category is not None:
        span.set_attribute("pointsman.category", reply.category)
    if reply.confidence is not None:
        span.set_attribute("pointsman.confidence", float(reply.confidence))
    if reply.block is not None:
        span.set_attribute("pointsman.block_reason", reply.block.reason)
    if reply.answer is not None or reply.cached is not None:
        span.set_attribute("pointsman.answered", True)
    if reply.error is not None:
        span.set_attribute("pointsman.error", reply.error)
