"""One ext_proc stream = one HTTP request: decode Envoy's messages, decide, answer.

This module turns Envoy's messages into calls of the pure core (the request's API dialect,
:mod:`.core.dialects`, and the routing policy, :mod:`.core.policy`) and of the bus, and the results
back into ext_proc responses; it decides nothing itself. Body handling follows the mode Envoy
announces per stream:

* ``BUFFERED``: the headers are answered at once (client routing headers stripped); the routing
  decision rides on the body response as header mutations, a body mutation and metadata.
* ``FULL_DUPLEX_STREAMED``: the headers response is held back while the body streams in, as the
  endpoint-picker protocol does; at the end of the body the shim sends the headers response (with
  the routing headers and a corrected ``content-length``) and the whole body back in one chunk.

The response path (usage, the completion event the picker's in-flight counts wait for, the
semantic cache fill) runs in one of two places:

* **observer** (Pointsman's own Envoy config): a second ext_proc filter in ``observability_mode``
  sends the routed request's headers and the response without waiting for answers, so the
  response path costs the client nothing. The decision travels to it as ``pointsman`` dynamic
  metadata, so the observer stream may reach another shim replica than the decision did.
* **inline** (gateways whose single ext_proc filter also sends the response, e.g. a Gateway API
  Inference Extension setup): the decision stream reads the response itself and sets the report
  headers on it.

A decision stream is inline unless Envoy says (``protocol_config``) that it sends no response body.

Two more steps serve the APIs that keep state or get translated (see docs/apis.md):

* **translation back**: the answer of a request translated to chat completions (and an error of
  the Messages API from any pool) goes through the decision stream, which asks for it with a
  ``mode_override`` when the observer layout would not send it, and answers each body chunk with
  the translated bytes;
* **the Responses API's state** (:mod:`.state`): a ``previous_response_id`` is resolved before the
  classifier is asked; the turn's input is kept by the decision, its response by whichever stream
  reads the answer; ``GET`` and ``DELETE /v1/responses/{id}`` are answered from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import msgspec
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from pointsman import debug, tracing
from pointsman.v1 import CompletionEvent, ModelCandidate, ModelsReply, PickReply
from pointsman.v1.cache import CacheStore
from pointsman.v1.classify import ClassifyReply
from pointsman.v1.policy import InferencePolicy
from pointsman_shim import envoy, metrics
from pointsman_shim.bus import Bus, BusTooLarge, BusUnavailable
from pointsman_shim.config import ShimConfig
from pointsman_shim.core import headers as h
from pointsman_shim.core import policy, rewrite, sessions
from pointsman_shim.core.dialects import openai_chat, openai_responses
from pointsman_shim.core.dialects.base import (
    AnswerReading,
    Dialect,
    LLMRequest,
    Translating,
    TranslatingDialect,
    UpstreamAnswer,
    UsageReading,
)
from pointsman_shim.core.dialects.registry import DIALECTS, Registry
from pointsman_shim.core.dialects.responses_answer import ResponseReader
from pointsman_shim.core.errors import RequestError
from pointsman_shim.core.policy import Answer, Passthrough, Refused, Route, Unavailable
from pointsman_shim.state import ResponsesState, StateUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_PM = envoy.ProcessingMode
_ATTR_NS = "envoy.filters.http.ext_proc"
#: ``GET`` / ``DELETE`` of a stored response (not ``/cancel``, not ``/render``: passed on).
_STORED = re.compile(r"^/v1/responses/(resp_[A-Za-z0-9_-]{1,200})$")
#: Dynamic metadata namespace of the decision, read back by the observer stream.
CONTEXT_NAMESPACE = "pointsman"
_tracer = tracing.tracer("pointsman_shim")
#: The span of every step while tracing is off: the OpenTelemetry API's no-op span, without the
#: API's work for each (context, attributes: about 6 us a span, two spans a decision).
_NO_SPAN: contextlib.AbstractContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)
_json = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Routed:
    """What the shim decided for a request that goes upstream: what the response path needs."""

    model: str
    route: str  # picked, default-model, fail-open
    endpoints: list[str] = field(default_factory=list)
    response_headers: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Stream:
    request_id: str = ""
    #: Wall clock, not monotonic: an observer stream takes it from the decision's metadata,
    #: which another shim replica may have written.
    started: float = field(default_factory=time.time)
    full_duplex: bool = False
    #: This (decision) stream also carries the response path; see the module docstring.
    inline: bool = True
    #: An ``observability_mode`` stream: read, never answer.
    observer: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    strip: list[str] = field(default_factory=list)
    #: The API of the request (``None``: a path the shim does not route).
    dialect: Dialect | None = None
    body: bytearray = field(default_factory=bytearray)
    subset: list[str] | None = None
    routed: Routed | None = None
    status: int = 0
    reader: UsageReading | None = None
    stream_flag: bool = False
    done: bool = False
    cache_token: str | None = None  # semantic cache: store the answer under this token
    cache_fill: AnswerReading | None = None
    #: The request may have debug output (``debug`` config, tenant allowed, header sent).
    debug: bool = False
    #: Envoy's request body mode of this stream (repeated in a ``mode_override``).
    body_mode: int = _PM.BUFFERED
    #: The dialect whose readers read the upstream's answer (``None``: :attr:`dialect`).
    speaks: Dialect | None = None
    #: The request went upstream translated; the decision stream translates its answer back.
    translated: bool = False
    llm: LLMRequest | None = None
    translator: Translating | None = None
    #: SHA-256 of the request's credentials (see ``policy.tenant``).
    tenant: str = ""
    #: Responses API: keep the answer, continuing the conversation kept under this turn key.
    turn: str | None = None
    previous_response_id: str | None = None
    capture: ResponseReader | None = None
    #: Wall clock of the response's first non-empty body chunk (the first token of a stream).
    first_chunk_at: float | None = None
    #: The decision asked Envoy for the response (``_watch``) and it has not all come yet.
    watching: bool = False
    #: Answered for good (an immediate response, or a passthrough that skips the rest).
    answered: bool = False

    def ended(self) -> bool:
        """Envoy will send nothing more that this stream needs: the shim closes it (see
        :meth:`Processor.process`)."""
        if self.answered:
            return True
        if self.observer:
            return self.routed is None or self.done
        if self.inline:  # the stream reads the response until its end
            return self.done
        return self.routed is not None and not self.watching  # decided; nothing to translate


class Processor:
    """Handles ext_proc streams; one instance per shim process."""

    def __init__(
        self,
        config: ShimConfig,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        dialects: Registry = DIALECTS,
        known: Callable[[], Mapping[str, frozenset[str]]] | None = None,
        debug_config: debug.DebugConfig | None = None,
        state: ResponsesState | None = None,
    ) -> None:
        """``known`` gives the pools' members (:class:`pointsman_shim.membership.Membership`):
        the app always passes it; without it (protocol tests) picks are not vetted."""
        self.config = config
        self.bus = bus
        self.known = known
        self.debug = debug_config or debug.DebugConfig()
        self._refusals_logged: set[tuple[str, str]] = set()
        #: Wall clock and fresh ids, injectable so pinned tests get exact, repeatable answers.
        self.clock = clock
        self.new_id = new_id
        self.dialects = dialects
        self.state = state if state is not None else ResponsesState(config.responses)
        self.full_duplex_default = config.body_mode == "FULL_DUPLEX_STREAMED"
        self._config_rewrites = [r.contract() for r in config.model_rewrites]
        self.rewrites = rewrite.Rewrites(self._config_rewrites)

    def apply_policy(self, cluster: InferencePolicy) -> None:
        """The InferenceModelRewrites the collector read from Kubernetes, after the config's."""
        self.rewrites = rewrite.Rewrites(rewrite.ordered(self._config_rewrites, cluster.rewrites))

    async def process(
        self, requests: AsyncIterator[envoy.ProcessingRequest]
    ) -> AsyncIterator[envoy.ProcessingResponse]:
        stream = Stream(started=self.clock())
        metrics.STREAMS.inc()
        try:
            async for request in requests:
                try:
                    responses = await self._dispatch(stream, request)
                except Exception as exc:  # the shim never raises into Envoy: see _internal_error
                    failed = self._internal_error(stream, request, exc)
                    if failed is None:
                        continue
                    yield failed
                    return
                for response in responses:
                    yield response
                if stream.ended():
                    # Nothing more to do: close the stream now (OK status) instead of waiting
                    # for Envoy, which resets every ext_proc stream its server leaves open: a
                    # decision stream when its request ends, an observer stream after
                    # deferred_close_timeout (5 s). Each reset stream leaks native memory in
                    # grpcio's asyncio server (grpc/grpc#43360): the shim's RSS grew ~0.45 MiB
                    # a minute at 25 req/s (docs/reliability.md, soak). Envoy takes a server's
                    # close as "no more processing for this request".
                    break
        except asyncio.CancelledError:
            # Envoy reset the stream while the shim still expected messages on it: the request
            # ended early (client gone, upstream reset, message_timeout) or Envoy closed it
            # after an immediate answer. Counted: each reset keeps native memory (see above).
            metrics.STREAMS_RESET.labels("observer" if stream.observer else "decision").inc()
            raise
        finally:
            metrics.STREAMS.dec()
            if stream.routed is not None and not stream.done and (stream.inline or stream.observer):
                # The response never ended through us (client gone, upstream reset): still tell
                # the picker, so in-flight counts do not leak.
                await self._complete(stream)

    def _internal_error(
        self, stream: Stream, request: envoy.ProcessingRequest, exc: Exception
    ) -> envoy.ProcessingResponse | None:
        """An unexpected exception while handling one of Envoy's messages: a JSON 500 in the
        request's API format, counted in ``pointsman_shim_internal_errors_total{phase}`` and
        logged with its traceback. Never raised into the gRPC stream: with Envoy's
        ``failure_mode_allow`` that would forward the request unchecked (no validation, no
        safety verdict, the default pool). An observer stream is never answered: ``None``."""
        phase = request.WhichOneof("request") or "unknown"
        metrics.INTERNAL_ERRORS.labels(phase).inc()
        log.error(
            "internal error on %s of request %s: %s",
            phase, stream.request_id or "-", exc, exc_info=exc,
        )  # fmt: skip
        if request.observability_mode or stream.observer:
            return None
        message = (
            "the gateway failed to process this request (an internal error, logged with request "
            f"id {stream.request_id or '-'}); it was not forwarded"
        )
        error = RequestError(
            500, message, reason="internal_error", type="server_error", code="internal_error"
        )
        try:
            return self._reject(stream, error)
        except Exception:  # the dialect's error format failed too: OpenAI's, plainly
            log.exception("rendering the internal error failed")
            body = openai_chat.DIALECT.error_body(
                message, type="server_error", code="internal_error", status=500
            )
            return envoy.immediate(500, body, {h.ERROR: "internal_error"}, "internal_error")

    async def _dispatch(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> list[envoy.ProcessingResponse]:
        which = request.WhichOneof("request")
        if request.observability_mode or stream.observer:  # an observer is never answered
            await self._observe(stream, request, which)
            return []
        if which == "request_headers":
            return await self._request_headers(stream, request)
        if which == "request_body":
            return await self._request_body(stream, request)
        if which == "response_headers":
            return [await self._response_headers(stream, request)]
        if which == "response_body":
            return [await self._response_body(stream, request)]
        if which == "request_trailers":
            return [envoy.REQUEST_TRAILERS_CONTINUE]
        if which == "response_trailers":
            return [envoy.RESPONSE_TRAILERS_CONTINUE]
        return []

    # -- request path -------------------------------------------------------------------------

    async def _request_headers(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> list[envoy.ProcessingResponse]:
        stream.headers = envoy.header_map(request.request_headers)
        stream.request_id = stream.headers.get("x-request-id") or self.new_id()
        stream.strip = h.to_strip(list(stream.headers), keep_reports=self.config.mode == "picker")
        stream.debug = debug.allowed(self.debug, stream.headers)
        if request.HasField("protocol_config"):
            stream.body_mode = request.protocol_config.request_body_mode
            stream.full_duplex = stream.body_mode == _PM.FULL_DUPLEX_STREAMED
            stream.inline = request.protocol_config.response_body_mode != _PM.NONE
        else:
            stream.full_duplex = self.full_duplex_default
            stream.body_mode = _PM.FULL_DUPLEX_STREAMED if stream.full_duplex else _PM.BUFFERED
        subset = envoy.metadata_value(request, h.SUBSET_NAMESPACE, h.SUBSET)
        if isinstance(subset, str):
            subset = [s.strip() for s in subset.split(",") if s.strip()]
        stream.subset = subset or None

        path = stream.headers.get(":path", "")
        method = stream.headers.get(":method", "")
        stream.dialect = self.dialects.for_path(path)
        bare = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and bare == policy.MODELS_PATH:
            return [await self._models(stream)]
        stored = _STORED.match(bare) if method in ("GET", "DELETE") else None
        if stored is not None:
            return [await self._stored(stream, method, stored.group(1))]
        if stream.dialect is None or method != "POST":
            return [self._decided(stream, Passthrough())]
        if request.request_headers.end_of_stream:
            error = RequestError(
                400, "request body is empty; expected a JSON object", reason="empty_body"
            )
            return [self._reject(stream, error)]
        if stream.full_duplex:
            return []  # the headers response waits for the end of the body (see _route)
        watch = self._watch(stream)
        stream.watching = watch is not None
        return [envoy.request_headers(envoy.common(remove=stream.strip), mode=watch)]

    def _watch(self, stream: Stream) -> envoy.ProcessingMode | None:
        """Ask for the response headers of a request whose answer may need translating, when
        this decision stream would not see them (the observer layout): only such requests pay
        for the round trip. Envoy ignores mode overrides when the filter's body mode is
        ``FULL_DUPLEX_STREAMED``, so that layout cannot translate (see :meth:`_decide`)."""
        dialect = _translating(stream.dialect)
        if dialect is None or stream.inline or stream.full_duplex:
            return None
        if not (dialect.reformats_errors or self.config.apis.translates(dialect.api)):
            return None
        return envoy.watch_response(stream.body_mode, _PM.NONE)

    async def _request_body(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> list[envoy.ProcessingResponse]:
        body = request.request_body
        if stream.dialect is None:  # a body we asked not to see (mode override not honoured)
            return [envoy.request_body()]
        stream.body += body.body
        if len(stream.body) > self.config.max_body_bytes:
            error = RequestError(
                413,
                f"request body exceeds the limit of {self.config.max_body_bytes} bytes",
                reason="body_too_large",
            )
            return [self._reject(stream, error)]
        if not body.end_of_stream:
            # FULL_DUPLEX_STREAMED: keep buffering, answer at the end. STREAMED: Envoy waits for
            # every chunk's answer, so let it go on (the decision still comes at the end).
            return [] if stream.full_duplex else [envoy.request_body()]
        return await self._route(stream)

    async def _route(self, stream: Stream) -> list[envoy.ProcessingResponse]:
        # The decision continues the trace Envoy (or the client) started: its traceparent header.
        with (
            _tracer.start_as_current_span(
                "pointsman.shim.route",
                context=tracing.extract(stream.headers),
                kind=SpanKind.SERVER,
                attributes={"pointsman.request_id": stream.request_id},
            )
            if tracing.enabled()
            else _NO_SPAN
        ) as span:
            responses = await self._route_in_span(stream)
            if stream.routed is not None:
                span.set_attribute("pointsman.model", stream.routed.model)
                span.set_attribute("pointsman.route", stream.routed.route)
                span.set_attribute("pointsman.endpoints", stream.routed.endpoints)
            elif responses and responses[0].HasField("immediate_response"):
                immediate = responses[0].immediate_response
                span.set_attribute("http.response.status_code", int(immediate.status.code))
                span.set_attribute("pointsman.answered", immediate.details or "immediate")
            return responses

    async def _route_in_span(self, stream: Stream) -> list[envoy.ProcessingResponse]:
        dialect = stream.dialect
        assert dialect is not None
        started = time.perf_counter()
        raw = bytes(stream.body)
        stream.tenant = policy.tenant(stream.headers)
        session: sessions.Session | None = None
        try:
            llm = dialect.parse(raw, max_bytes=self.config.max_body_bytes)
            inherited: str | None = None
            if llm.previous_response_id is not None:
                llm, inherited = await self._resume(stream, llm)
            session = sessions.identify(llm, stream.headers, stream.tenant, inherited)
            decision = await self._decide(stream, dialect, llm, session)
        except RequestError as exc:
            return [self._reject(stream, exc)]
        finally:
            metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        keep = llm.store and self.state.enabled and dialect is openai_responses.DIALECT
        if isinstance(decision, Answer):
            if keep and decision.state is not None:  # a cache hit answers and is kept too
                turn = self.new_id()
                self._keep_turn(turn, llm, session, stream.tenant)
                self.state.keep_response(decision.state, turn, stream.tenant)
            return [self._decided(stream, decision)]
        metrics.child(metrics.SESSIONS, session.source if session else "none").inc()
        if session is not None:
            decision.headers[h.SESSION] = session.source
        self._count(decision)
        routed = Routed(decision.model, decision.route, decision.endpoints, decision.headers)
        stream.routed = routed
        stream.stream_flag = llm.stream
        stream.cache_token = decision.cache_token
        stream.translated = decision.translated
        stream.speaks = self.dialects.named(decision.speaks) if decision.speaks else None
        stream.llm = llm
        stream.previous_response_id = llm.previous_response_id
        if keep:
            stream.turn = self.new_id()
            self._keep_turn(stream.turn, llm, session, stream.tenant)

        set_headers = decision.request_headers()
        metadata: dict[str, dict[str, Any]] = {}
        if not (self.config.mode == "picker" and stream.inline):
            # An inline endpoint picker behind a model selector reads the response itself; the
            # observer keeps the selector's context.
            metadata[CONTEXT_NAMESPACE] = _context(stream, routed)
        if decision.endpoints:
            metadata[h.LB_NAMESPACE] = {h.DESTINATION: set_headers[h.DESTINATION]}
        out_body = raw if decision.body is None else decision.body
        if decision.body is not None or stream.full_duplex:
            set_headers["content-length"] = str(len(out_body))

        if stream.full_duplex:
            return [
                envoy.request_headers(
                    envoy.common(
                        set_headers=set_headers, remove=stream.strip, clear_route_cache=True
                    ),
                    metadata=metadata,
                ),
                envoy.request_body(envoy.common(streamed_body=out_body)),
            ]
        return [
            envoy.request_body(
                envoy.common(set_headers=set_headers, body=decision.body, clear_route_cache=True),
                metadata=metadata,
            )
        ]

    async def _decide(
        self,
        stream: Stream,
        dialect: Dialect,
        llm: LLMRequest,
        session: sessions.Session | None,
    ) -> Route | Answer:
        """Classifier (when configured and the request generates), then picker; the policy
        decides at each step. Raises :class:`RequestError` for a request the chosen pool cannot
        take, before the picker reserves an endpoint for it."""
        classified: ClassifyReply | Unavailable | None = None
        translating = _translating(dialect)
        mode = self.config.mode
        if (
            mode != "picker"
            and self.config.classifier.enabled
            and (translating is None or translating.generates)
        ):
            classified = await self._classify(stream, llm, session)
        choice = policy.choose(
            llm, dialect, classified, self.config, now=self.clock(), nonce=self._nonce
        )
        if isinstance(choice, Answer):
            return choice
        asked = choice.model
        choice = policy.rewrite(choice, self.rewrites, stream.request_id)
        if choice.rewrite is not None:
            metrics.REWRITES.labels(choice.rewrite, asked, choice.model).inc()
        upstream = policy.prepare(llm, dialect, choice, self.config)
        if choice.changes.upstream == "chat" and stream.full_duplex and not stream.inline:
            raise RequestError(
                501,
                f"model '{choice.model}' gets this API translated to chat completions, which "
                "needs the response: Envoy's FULL_DUPLEX_STREAMED body mode with the observer "
                "layout cannot give it to the shim (use BUFFERED, the inline response path, or "
                "a pool that serves the API natively: shim.apis)",
                reason="translation_unavailable",
                type="server_error",
            )
        picked = (
            None
            if mode == "selector"
            else await self._pick(stream, llm, choice.model, session, choice.candidates)
        )
        if self.known is not None and isinstance(picked, PickReply):
            served = choice.model
            if picked.model and any(c.model == picked.model for c in choice.candidates):
                served = picked.model  # the picker chose another candidate: its pool
            picked = policy.vet_pick(picked, served, self.known())
            if isinstance(picked, Refused):
                self._refused(stream, served, picked)
        return policy.route(
            llm, dialect, choice, picked, self.config, debug=stream.debug, upstream=upstream,
            hinted=stream.subset is not None,
            report_choice=self.debug.report_model_choice,
        )  # fmt: skip

    async def _resume(self, stream: Stream, llm: LLMRequest) -> tuple[LLMRequest, str | None]:
        """The request with the conversation of the response it continues before its input,
        and that conversation's session; 404 (unknown, expired, another tenant's), 503 (store
        down) or 413 (the whole conversation is larger than a body may be) otherwise."""
        rid = llm.previous_response_id
        assert rid is not None
        try:
            kept = await self.state.conversation(rid, stream.tenant)
        except StateUnavailable as exc:
            raise _store_down(exc) from None
        if kept is None:
            raise _not_found(rid, "previous_response_id")
        resumed = openai_responses.resume(llm, kept.items)
        size = sum(len(t.content) for t in resumed.turns)
        if size > self.config.max_body_bytes:
            raise RequestError(
                413,
                f"the conversation continued from '{rid}' is larger than the limit of "
                f"{self.config.max_body_bytes} bytes",
                reason="conversation_too_large",
                param="previous_response_id",
            )
        return resumed, kept.session

    def _keep_turn(
        self, turn: str, llm: LLMRequest, session: sessions.Session | None, tenant: str
    ) -> None:
        items = openai_responses.conversation(llm)
        self.state.keep_turn(turn, items, session.id if session else None, tenant)

    async def _stored(self, stream: Stream, method: str, rid: str) -> envoy.ProcessingResponse:
        """``GET`` or ``DELETE /v1/responses/{id}``, answered from the store by the shim."""
        stream.dialect = openai_responses.DIALECT
        tenant = policy.tenant(stream.headers)
        try:
            if method == "GET":
                found = await self.state.response(rid, tenant)
                body = _json(found) if found is not None else None
            else:
                deleted = await self.state.delete(rid, tenant)
                gone = {"id": rid, "object": "response", "deleted": True}
                body = _json(gone) if deleted else None
        except StateUnavailable as exc:
            return self._reject(stream, _store_down(exc))
        if body is None:
            return self._reject(stream, _not_found(rid, "response_id"))
        return self._decided(stream, Answer(200, body, {}, outcome="answered"))

    def _refused(self, stream: Stream, model: str, refused: Refused) -> None:
        """Count and log a pick naming endpoints outside the model's pool (once per address
        and reason, so a flood of forged replies cannot flood the log)."""
        metrics.REFUSED_PICKS.labels(refused.reason).inc()
        key = (refused.reason, ",".join(refused.endpoints))
        if key not in self._refusals_logged and len(self._refusals_logged) < 1024:
            self._refusals_logged.add(key)
            log.warning(
                "refused a pick for model %r naming %s (%s): not an endpoint discovery knows; "
                "request %s takes the %s path",
                model, ", ".join(refused.endpoints), refused.reason, stream.request_id,
                self.config.failure_mode,
            )  # fmt: skip

    def _nonce(self) -> str:
        return self.new_id()[:24]

    async def _pick(
        self,
        stream: Stream,
        llm: LLMRequest,
        model: str,
        session: sessions.Session | None,
        candidates: list[ModelCandidate] | None = None,
    ) -> PickReply | Unavailable:
        request = policy.pick_request(
            llm, model, stream.headers, stream.request_id, stream.subset, self.config, session,
            debug=stream.debug, candidates=candidates,
        )  # fmt: skip
        timeout_s = (self.config.pick_timeout_ms + self.config.queue_wait_ms) / 1000
        with _client_span("pointsman.pick") as span:
            reply = await self._ask("picker", span, self.bus.pick(request, timeout_s))
            if isinstance(reply, Unavailable):
                return reply
            span.set_attribute("pointsman.pick_status", str(reply.status.value))
            span.set_attribute("pointsman.endpoints", reply.endpoints)
            return reply

    async def _classify(
        self, stream: Stream, llm: LLMRequest, session: sessions.Session | None
    ) -> ClassifyReply | Unavailable:
        request = policy.classify_request(
            llm, stream.headers, stream.request_id, session, debug=stream.debug
        )
        # The classifier admits only what it can answer within the shim's wait.
        request.budget_ms = timeout_ms = policy.classify_timeout_ms(self.config.classifier, request)
        with _client_span("pointsman.classify") as span:
            reply = await self._ask(
                "classifier", span, self.bus.classify(request, timeout_ms / 1000)
            )
            if isinstance(reply, Unavailable):
                return reply
            if reply.error is not None:  # e.g. overloaded: no decision, same policy as a timeout
                span.set_attribute("pointsman.bus_failure", reply.error)
                return self._bus_failed("classifier", reply.error)
            span.set_attribute("pointsman.model", reply.model)
            if reply.category is not None:
                span.set_attribute("pointsman.category", reply.category)
            return reply

    async def _models(self, stream: Stream) -> envoy.ProcessingResponse:
        """``GET /v1/models`` from the picker's view of the fleet (none in selector mode)."""
        reply: ModelsReply | Unavailable | None = None
        if self.config.mode != "selector":
            try:
                reply = await self.bus.models(self.config.pick_timeout_ms / 1000)
            except BusUnavailable as exc:
                reply = self._bus_failed(exc.service, exc.kind)
        return self._decided(stream, policy.list_models(reply, self.config, now=self.clock()))

    def _reject(self, stream: Stream, error: RequestError) -> envoy.ProcessingResponse:
        """An error answer in the request's API format (OpenAI's for a path of none)."""
        return self._decided(stream, policy.reject(error, stream.dialect or openai_chat.DIALECT))

    def _decided(self, stream: Stream, decision: Answer | Passthrough) -> envoy.ProcessingResponse:
        """Count a decision that routes nothing, and turn it into Envoy's answer."""
        self._count(decision)
        stream.answered = True
        if isinstance(decision, Passthrough):
            return envoy.request_headers(envoy.common(remove=stream.strip), mode=envoy.SKIP_BODIES)
        return envoy.immediate(
            decision.status,
            decision.body,
            {"content-type": decision.content_type, **decision.headers},
            details=decision.reason,
        )

    def _count(self, decision: Answer | Passthrough | Route) -> None:
        for service in decision.fail_open:
            metrics.child(metrics.FAIL_OPEN, service).inc()
        if isinstance(decision, Answer) and decision.reason:
            metrics.REJECTIONS.labels(decision.reason, str(decision.status)).inc()
        if decision.outcome is not None:
            metrics.child(metrics.REQUESTS, decision.outcome).inc()
        if isinstance(decision, Route) and decision.endpoints:
            metrics.child(metrics.PICKS, decision.model, decision.endpoints[0]).inc()

    async def _ask(self, service: str, span: Span, call: Awaitable[T]) -> T | Unavailable:
        """One bus request to ``service``, timed (``pointsman_shim_bus_seconds``); a bus that
        cannot answer is :class:`Unavailable` (marked on ``span``), a request too large for it
        the client's error."""
        started = time.perf_counter()
        try:
            return await call
        except BusTooLarge as exc:
            raise _too_large_for_bus(exc) from None
        except BusUnavailable as exc:
            span.set_attribute("pointsman.bus_failure", exc.kind)
            return self._bus_failed(exc.service, exc.kind)
        finally:
            metrics.child(metrics.BUS_SECONDS, service).observe(time.perf_counter() - started)

    def _bus_failed(self, service: str, kind: str) -> Unavailable:
        metrics.BUS_FAILURES.labels(service, kind).inc()
        log.warning("bus call failed: %s: %s", service, kind)
        return Unavailable(service, kind)

    # -- response path ------------------------------------------------------------------------

    async def _response_headers(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> envoy.ProcessingResponse:
        """Inline: read the response headers and report the decision on them. Inline or
        watching: start translating the answer back when it needs it."""
        if stream.inline:
            served = await self._read_response_headers(stream, request)
        else:  # watching: the observer reads the response; only the translation is ours
            served = None
            stream.status = _status_of(envoy.header_map(request.response_headers))
        routed = stream.routed
        if routed is None:
            return envoy.response_headers()
        out: dict[str, str] = {}
        if stream.inline:
            out = {h.SELECTED_MODEL: routed.model, **routed.response_headers}
            if served and self.debug.report_endpoint:
                out[h.ENDPOINT] = served
        remove: list[str] = []
        mode = None
        translator = self._translator(stream, request)
        if translator is not None:
            stream.translator = translator
            sse = _is_sse(request)
            remove.append("content-length")
            out["content-type"] = "text/event-stream" if sse else "application/json"
            # A whole JSON answer is buffered, so that a failed translation can still change
            # the status; an event stream is translated as it streams.
            mode = envoy.watch_response(stream.body_mode, _PM.STREAMED if sse else _PM.BUFFERED)
        else:
            stream.watching = False  # no body to translate: the watch ends here
        return envoy.response_headers(envoy.common(set_headers=out, remove=remove), mode=mode)

    def _translator(self, stream: Stream, request: envoy.ProcessingRequest) -> Translating | None:
        dialect = _translating(stream.dialect)
        if dialect is None or stream.llm is None or request.response_headers.end_of_stream:
            return None
        answer = UpstreamAnswer(
            stream.status, _is_sse(request), stream.translated, self._nonce(), int(stream.started)
        )
        return dialect.response_translator(stream.llm, answer)

    async def _read_response_headers(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> str | None:
        """Status, usage reader, cache fill and the served endpoint (first in ``endpoints``)."""
        headers = envoy.header_map(request.response_headers)
        stream.status = _status_of(headers)
        routed = stream.routed
        if routed is None:
            return None
        # The engine's answer is read with the readers of the API it speaks (set with
        # ``routed``, by the decision or from its metadata).
        dialect = stream.speaks or stream.dialect
        assert dialect is not None
        sse = headers.get("content-type", "").startswith("text/event-stream")
        stream.reader = dialect.usage_reader(sse=sse)
        if stream.cache_token is not None and 200 <= stream.status < 300:
            stream.cache_fill = dialect.answer_reader(sse=sse)
        if stream.turn is not None and not stream.translated and 200 <= stream.status < 300:
            stream.capture = ResponseReader(sse=sse)
        served = _served_endpoint(request) or (routed.endpoints[0] if routed.endpoints else "")
        routed.endpoints = [served, *[e for e in routed.endpoints if e != served]] if served else []
        if request.response_headers.end_of_stream:
            await self._complete(stream)
        return served or None

    async def _response_body(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> envoy.ProcessingResponse:
        body = request.response_body
        if stream.first_chunk_at is None and body.body:
            stream.first_chunk_at = self.clock()
        if stream.reader is not None:
            stream.reader.feed(body.body)
        if stream.cache_fill is not None:
            stream.cache_fill.feed(body.body)
        if stream.capture is not None:
            stream.capture.feed(body.body)
        response = envoy.RESPONSE_BODY_CONTINUE
        translator = stream.translator
        if translator is not None and not stream.observer:
            out = translator.feed(body.body)
            headers: dict[str, str] = {}
            if body.end_of_stream:
                out += translator.finish()
                stream.translator = None
                stream.watching = False
                self._translated(stream, translator)
                if translator.status is not None:  # still possible: the JSON was buffered
                    headers = {":status": str(translator.status), h.ERROR: "translation_failed"}
            response = envoy.response_body(envoy.common(set_headers=headers, body=out))
        ends = body.end_of_stream and stream.routed is not None and not stream.done
        if ends and (stream.inline or stream.observer):
            await self._complete(stream)
        return response

    def _translated(self, stream: Stream, translator: Translating) -> None:
        """A translation ended: count it; keep a translated Responses answer."""
        dialect = _translating(stream.dialect)
        if dialect is None:
            return
        metrics.TRANSLATIONS.labels(dialect.api, "failed" if translator.failed else "ok").inc()
        result = translator.result
        if stream.turn is not None and stream.translated and result is not None:
            self.state.keep_response(result, stream.turn, stream.tenant)

    async def _observe(
        self, stream: Stream, request: envoy.ProcessingRequest, which: str | None
    ) -> None:
        """An observer stream's message: the same response path, and no answer to Envoy."""
        if not stream.observer:
            stream.observer = True
            self._adopt_context(stream, request)
            metrics.child(metrics.OBSERVED, "true" if stream.routed is not None else "false").inc()
        if stream.routed is None or stream.done:
            return  # not a request the shim routed (non-LLM path, immediate answer)
        if which == "response_headers":
            await self._read_response_headers(stream, request)
        elif which == "response_body":
            await self._response_body(stream, request)

    def _adopt_context(self, stream: Stream, request: envoy.ProcessingRequest) -> None:
        """Take the decision from the first observed message's metadata; none = not ours."""
        ns = envoy.metadata_namespace(request, CONTEXT_NAMESPACE)
        if ns is None:
            return
        ctx = envoy.struct_fields(ns)
        model = ctx.get("model")
        if not isinstance(model, str) or not model:
            return
        endpoints = ctx.get("endpoints")
        stream.routed = Routed(
            model=model,
            route=str(ctx.get("route", "")),
            endpoints=[e for e in endpoints if isinstance(e, str)]
            if isinstance(endpoints, list)
            else [],
        )
        # A decision of a shim from before dialects had names was an OpenAI one.
        stream.dialect = self.dialects.named(str(ctx.get("dialect", ""))) or openai_chat.DIALECT
        speaks = ctx.get("speaks")
        stream.speaks = self.dialects.named(speaks) if isinstance(speaks, str) else None
        turn = ctx.get("turn")
        stream.turn = turn if isinstance(turn, str) and turn else None
        stream.tenant = str(ctx.get("tenant", ""))
        previous = ctx.get("previous_response_id")
        stream.previous_response_id = previous if isinstance(previous, str) else None
        stream.request_id = str(ctx.get("request_id") or stream.request_id or self.new_id())
        stream.stream_flag = bool(ctx.get("stream", False))
        started = ctx.get("started")
        if isinstance(started, (int, float)):
            stream.started = float(started)
        token = ctx.get("cache_token")
        stream.cache_token = token if isinstance(token, str) and token else None

    async def _complete(self, stream: Stream) -> None:
        stream.done = True
        routed = stream.routed
        assert routed is not None
        usage = stream.reader.finish() if stream.reader is not None else None
        status_class = f"{stream.status // 100}xx" if stream.status else "none"
        flag = "true" if stream.stream_flag else "false"
        metrics.child(metrics.COMPLETIONS, routed.model, status_class, flag).inc()
        if usage is not None:
            if usage.prompt_tokens is not None:
                metrics.child(metrics.TOKENS, routed.model, "prompt").inc(usage.prompt_tokens)
            if usage.completion_tokens is not None:
                metrics.child(metrics.TOKENS, routed.model, "completion").inc(
                    usage.completion_tokens
                )
        elif 200 <= stream.status < 300:
            metrics.child(metrics.USAGE_MISSING, routed.model, flag).inc()
        if stream.cache_fill is not None and stream.cache_token is not None:
            filled = stream.cache_fill.finish()
            stream.cache_fill = None
            if filled is not None:
                await self.bus.publish_cache_store(
                    CacheStore(
                        token=stream.cache_token,
                        request_id=stream.request_id,
                        model=routed.model,
                        status=stream.status,
                        content=filled.content,
                        role=filled.role,
                        finish_reason=filled.finish_reason,
                        prompt_tokens=filled.prompt_tokens,
                        completion_tokens=filled.completion_tokens,
                    )
                )
        if stream.capture is not None and stream.turn is not None:
            response = stream.capture.response()
            stream.capture = None
            if response is not None:
                # The engine answered a stateless request: say what the client asked.
                response["previous_response_id"] = stream.previous_response_id
                response["store"] = True
                self.state.keep_response(response, stream.turn, stream.tenant)
        if not self.config.publish_completions:
            return
        ended = self.clock()
        ttft_ms: float | None = None
        tpot_ms: float | None = None
        first = stream.first_chunk_at
        if stream.stream_flag and first is not None:
            ttft_ms = max(0.0, first - stream.started) * 1000
            tokens = usage.completion_tokens if usage else None
            if tokens is not None and tokens > 1:
                tpot_ms = max(0.0, ended - first) * 1000 / (tokens - 1)
        await self.bus.publish_completion(
            CompletionEvent(
                request_id=stream.request_id,
                model=routed.model,
                endpoint=routed.endpoints[0] if routed.endpoints else "",
                status_code=stream.status,
                stream=stream.stream_flag,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                total_tokens=usage.total_tokens if usage else None,
                duration_ms=max(0.0, ended - stream.started) * 1000,
                ttft_ms=ttft_ms,
                tpot_ms=tpot_ms,
                cached_tokens=usage.cached_tokens if usage else None,
            )
        )


def _client_span(name: str) -> contextlib.AbstractContextManager[Span]:
    """The span of a bus call (the no-op one while tracing is off)."""
    if not tracing.enabled():
        return _NO_SPAN
    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT)


def _context(stream: Stream, routed: Routed) -> dict[str, Any]:
    """What the observer stream needs of the decision, as ``pointsman`` dynamic metadata."""
    assert stream.dialect is not None
    context: dict[str, Any] = {
        "request_id": stream.request_id,
        "dialect": stream.dialect.name,
        "model": routed.model,
        "route": routed.route,
        "endpoints": list(routed.endpoints),
        "stream": stream.stream_flag,
        "started": stream.started,
    }
    if stream.cache_token is not None:
        context["cache_token"] = stream.cache_token
    if stream.speaks is not None:
        context["speaks"] = stream.speaks.name
    if stream.turn is not None and not stream.translated:  # the observer keeps the answer
        context["turn"] = stream.turn
        context["tenant"] = stream.tenant
        if stream.previous_response_id is not None:
            context["previous_response_id"] = stream.previous_response_id
    return context


def _translating(dialect: Dialect | None) -> TranslatingDialect | None:
    """The dialect as a :class:`TranslatingDialect`, when it is one."""
    if dialect is None or not hasattr(dialect, "response_translator"):
        return None
    return cast(TranslatingDialect, dialect)


def _status_of(headers: dict[str, str]) -> int:
    try:
        return int(headers.get(":status", "0"))
    except ValueError:
        return 0


def _is_sse(request: envoy.ProcessingRequest) -> bool:
    headers = envoy.header_map(request.response_headers)
    return headers.get("content-type", "").startswith("text/event-stream")


def _not_found(rid: str, param: str) -> RequestError:
    return RequestError(
        404, f"Response with id '{rid}' not found.", reason="response_not_found", param=param
    )


def _store_down(exc: StateUnavailable) -> RequestError:
    return RequestError(
        503,
        f"{exc}; stateful Responses calls (GET, DELETE, previous_response_id) cannot be "
        "answered now, stateless ones still can",
        reason="store_unavailable",
        type="service_unavailable",
        code="service_unavailable",
    )


def _served_endpoint(request: envoy.ProcessingRequest) -> str | None:
    """Where the gateway really sent the request: the protocol's served-endpoint metadata, else
    the ``upstream.address`` attribute Envoy sends when asked for it."""
    served = envoy.metadata_value(request, h.LB_NAMESPACE, h.DESTINATION_SERVED)
    if isinstance(served, str) and served:
        return served
    attrs = request.attributes.get(_ATTR_NS)
    if attrs is not None and "upstream.address" in attrs.fields:
        value = attrs.fields["upstream.address"].string_value
        return value or None
    return None


def _too_large_for_bus(exc: BusTooLarge) -> RequestError:
    """413 for a request the bus cannot carry to ``exc.service`` (never sent on unchecked)."""
    metrics.BUS_TOO_LARGE.labels(exc.service).inc()
    log.warning("request too large for the bus: %s", exc)
    return RequestError(
        413,
        f"the request is too large to be checked and routed ({exc.size} bytes for the "
        f"{exc.service}; the message bus takes at most {exc.limit})",
        reason="body_too_large_for_bus",
    )
