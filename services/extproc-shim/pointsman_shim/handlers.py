"""One ext_proc stream = one HTTP request: decode Envoy's messages, decide, answer.

This module turns Envoy's messages into calls of the pure core and the bus, and the results back
into ext_proc responses. Body handling follows the mode Envoy announces per stream:

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
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind

from pointsman import tracing
from pointsman.v1 import CompletionEvent, PickReply, PickRequest, PickStatus
from pointsman.v1.cache import CacheStore
from pointsman.v1.classify import ClassifyReply, ClassifyRequest, Message
from pointsman_shim import envoy, metrics
from pointsman_shim.bus import Bus, BusUnavailable
from pointsman_shim.config import ShimConfig
from pointsman_shim.core import headers as h
from pointsman_shim.core.cachefill import Reassembler
from pointsman_shim.core.errors import RequestError, error_body
from pointsman_shim.core.openai import MODELS_PATH, Kind, LLMRequest, parse, route_kind
from pointsman_shim.core.rewrite import rewrite
from pointsman_shim.core.usage import UsageReader

log = logging.getLogger(__name__)

_PM = envoy.ProcessingMode
_ATTR_NS = "envoy.filters.http.ext_proc"
#: Dynamic metadata namespace of the decision, read back by the observer stream.
CONTEXT_NAMESPACE = "pointsman"
_encoder = msgspec.json.Encoder()
_tracer = tracing.tracer("pointsman_shim")


@dataclass(slots=True)
class Routed:
    """What the shim decided for a request that goes upstream."""

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
    kind: Kind | None = None
    body: bytearray = field(default_factory=bytearray)
    subset: list[str] | None = None
    routed: Routed | None = None
    status: int = 0
    reader: UsageReader | None = None
    stream_flag: bool = False
    done: bool = False
    cache_token: str | None = None  # semantic cache: store the answer under this token
    cache_fill: Reassembler | None = None


class Processor:
    """Handles ext_proc streams; one instance per shim process."""

    def __init__(
        self,
        config: ShimConfig,
        bus: Bus,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.config = config
        self.bus = bus
        #: Wall clock and fresh ids, injectable so pinned tests get exact, repeatable answers.
        self.clock = clock
        self.new_id = new_id
        self.auto_models = frozenset(config.auto_models)
        self.full_duplex_default = config.body_mode == "FULL_DUPLEX_STREAMED"

    async def process(
        self, requests: AsyncIterator[envoy.ProcessingRequest]
    ) -> AsyncIterator[envoy.ProcessingResponse]:
        stream = Stream(started=self.clock())
        metrics.STREAMS.inc()
        try:
            async for request in requests:
                for response in await self._dispatch(stream, request):
                    yield response
        finally:
            metrics.STREAMS.dec()
            if stream.routed is not None and not stream.done and (stream.inline or stream.observer):
                # The response never ended through us (client gone, upstream reset): still tell
                # the picker, so in-flight counts do not leak.
                await self._complete(stream)

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
        stream.strip = h.to_strip(list(stream.headers))
        if request.HasField("protocol_config"):
            stream.full_duplex = (
                request.protocol_config.request_body_mode == _PM.FULL_DUPLEX_STREAMED
            )
            stream.inline = request.protocol_config.response_body_mode != _PM.NONE
        else:
            stream.full_duplex = self.full_duplex_default
        subset = envoy.metadata_value(request, h.SUBSET_NAMESPACE, h.SUBSET)
        if isinstance(subset, str):
            subset = [s.strip() for s in subset.split(",") if s.strip()]
        stream.subset = subset or None

        path = stream.headers.get(":path", "")
        method = stream.headers.get(":method", "")
        stream.kind = route_kind(path)
        if method == "GET" and path.split("?", 1)[0].rstrip("/") == MODELS_PATH:
            return [await self._models(stream)]
        if stream.kind is None or method != "POST":
            metrics.REQUESTS.labels("passthrough").inc()
            return [
                envoy.request_headers(envoy.common(remove=stream.strip), mode=envoy.SKIP_BODIES)
            ]
        if request.request_headers.end_of_stream:
            return [
                self._reject(
                    RequestError(
                        400, "request body is empty; expected a JSON object", reason="empty_body"
                    )
                )
            ]
        if stream.full_duplex:
            return []  # the headers response waits for the end of the body (see _route)
        return [envoy.request_headers(envoy.common(remove=stream.strip))]

    async def _request_body(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> list[envoy.ProcessingResponse]:
        body = request.request_body
        if stream.kind is None:  # a body we asked not to see (mode override not honoured)
            return [envoy.request_body()]
        stream.body += body.body
        if len(stream.body) > self.config.max_body_bytes:
            return [
                self._reject(
                    RequestError(
                        413,
                        f"request body exceeds the limit of {self.config.max_body_bytes} bytes",
                        reason="body_too_large",
                    )
                )
            ]
        if not body.end_of_stream:
            # FULL_DUPLEX_STREAMED: keep buffering, answer at the end. STREAMED: Envoy waits for
            # every chunk's answer, so let it go on (the decision still comes at the end).
            return [] if stream.full_duplex else [envoy.request_body()]
        return await self._route(stream)

    async def _route(self, stream: Stream) -> list[envoy.ProcessingResponse]:
        # The decision continues the trace Envoy (or the client) started: its traceparent header.
        with _tracer.start_as_current_span(
            "pointsman.shim.route",
            context=tracing.extract(stream.headers),
            kind=SpanKind.SERVER,
            attributes={"pointsman.request_id": stream.request_id},
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
        assert stream.kind is not None
        started = time.perf_counter()
        raw = bytes(stream.body)
        try:
            llm = parse(stream.kind, raw, max_bytes=self.config.max_body_bytes)
            outcome = await self._decide(stream, llm)
        except RequestError as exc:
            return [self._reject(exc)]
        finally:
            metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        if isinstance(outcome, envoy.ProcessingResponse):
            return [outcome]
        routed, new_body = outcome
        stream.routed = routed
        stream.stream_flag = llm.stream

        set_headers = {h.SELECTED_MODEL: routed.model, **routed.response_headers}
        metadata: dict[str, dict[str, Any]] = {CONTEXT_NAMESPACE: _context(stream, routed)}
        if routed.endpoints:
            destination = ",".join(routed.endpoints)
            set_headers[h.DESTINATION] = destination
            metadata[h.LB_NAMESPACE] = {h.DESTINATION: destination}
        out_body = raw if new_body is None else new_body
        if new_body is not None or stream.full_duplex:
            set_headers["content-length"] = str(len(out_body))
        metrics.REQUESTS.labels("fail_open" if routed.route == "fail-open" else "routed").inc()

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
                envoy.common(set_headers=set_headers, body=new_body, clear_route_cache=True),
                metadata=metadata,
            )
        ]

    async def _decide(
        self, stream: Stream, llm: LLMRequest
    ) -> tuple[Routed, bytes | None] | envoy.ProcessingResponse:
        """Classifier (when configured), then picker; an immediate answer ends the request."""
        model = llm.model
        route = "picked"
        extra: dict[str, str] = {}
        body_set: dict[str, Any] = {}
        system_prompt: str | None = None
        system_mode: Any = "insert"

        if self.config.classifier.enabled:
            try:
                reply = await self._classify(stream, llm)
            except BusUnavailable as exc:
                self._bus_failed(exc)
                if self.config.classifier.failure_mode == "fail-closed":
                    return self._reject(_unavailable(exc))
                metrics.FAIL_OPEN.labels("classifier").inc()
                extra[h.ROUTE_CLASSIFIER] = "fail-open"
                if model in self.auto_models:
                    model = self._default_model(model)
            else:
                if reply.block is not None:
                    metrics.REQUESTS.labels("blocked").inc()
                    b = reply.block
                    return envoy.immediate(
                        b.status,
                        error_body(b.message, type=b.type, code=b.code),
                        {h.BLOCK_REASON: b.reason, **reply.headers},
                    )
                if reply.answer is not None:
                    metrics.REQUESTS.labels("answered").inc()
                    return envoy.immediate(
                        reply.answer.status,
                        reply.answer.body,
                        {"content-type": reply.answer.content_type, **reply.headers},
                    )
                model = reply.model
                stream.cache_token = reply.cache_store
                extra.update(reply.headers)
                body_set = reply.body_set
                system_prompt = reply.system_prompt
                system_mode = reply.system_prompt_mode
        elif model in self.auto_models:
            model = self._default_model(model)
            route = "default-model"

        endpoints: list[str] = []
        try:
            pick = await self._pick(stream, llm, model)
        except BusUnavailable as exc:
            self._bus_failed(exc)
            if self.config.failure_mode == "fail-closed":
                return self._reject(_unavailable(exc))
            metrics.FAIL_OPEN.labels("picker").inc()
            route = "fail-open"
        else:
            if pick.status is PickStatus.UNKNOWN_MODEL:
                raise RequestError(
                    404,
                    f"The model '{model}' does not exist.",
                    reason="unknown_model",
                    code="model_not_found",
                    param="model",
                )
            if pick.status is PickStatus.NO_ENDPOINTS:
                raise RequestError(
                    503,
                    f"no endpoint of model '{model}' can take the request now"
                    + (f" ({pick.reason})" if pick.reason else ""),
                    reason="no_endpoints",
                    type="service_unavailable",
                )
            if pick.status is PickStatus.SHED:
                metrics.REQUESTS.labels("shed").inc()
                raise RequestError(
                    429,
                    f"model '{model}' is saturated and this request's priority is too low; retry later",
                    reason="shed",
                    type="rate_limit_exceeded",
                    headers={h.SHED_REASON: pick.reason or "saturated"},
                )
            endpoints = pick.endpoints[: self.config.max_endpoints]
            if pick.prefill:
                extra[h.PREFILLER] = pick.prefill
            if pick.scores and "x-pointsman-debug" in stream.headers:
                extra[h.SCORES] = _encoder.encode(pick.scores).decode()
            if endpoints:
                metrics.PICKS.labels(model, endpoints[0]).inc()

        extra[h.ROUTE] = route
        new = rewrite(
            llm,
            model=model,
            body_set=body_set,
            system_prompt=system_prompt,
            system_prompt_mode=system_mode,
        )
        new_body = None if new is None else _encoder.encode(new)
        return Routed(model, route, endpoints, extra), new_body

    def _default_model(self, asked: str) -> str:
        if self.config.default_model is None:
            raise RequestError(
                404,
                f"The model '{asked}' asks Pointsman to choose a model, but no classifier is "
                "enabled and shim.default_model is not set.",
                reason="unknown_model",
                code="model_not_found",
                param="model",
            )
        return self.config.default_model

    async def _pick(self, stream: Stream, llm: LLMRequest, model: str) -> PickReply:
        request = PickRequest(
            request_id=stream.request_id,
            model=model,
            subset=stream.subset,
            headers=h.forwarded(stream.headers),
            prompt=llm.prompt_text() if self.config.send_prompt else None,
            max_endpoints=self.config.max_endpoints,
        )
        started = time.perf_counter()
        with _tracer.start_as_current_span("pointsman.pick", kind=SpanKind.CLIENT) as span:
            try:
                reply = await self.bus.pick(request, self.config.pick_timeout_ms / 1000)
            except BusUnavailable as exc:
                span.set_attribute("pointsman.bus_failure", exc.kind)
                raise
            finally:
                metrics.BUS_SECONDS.labels("picker").observe(time.perf_counter() - started)
            span.set_attribute("pointsman.pick_status", str(reply.status.value))
            span.set_attribute("pointsman.endpoints", reply.endpoints)
            return reply

    async def _classify(self, stream: Stream, llm: LLMRequest) -> ClassifyReply:
        headers = h.forwarded(stream.headers)
        auth = stream.headers.get("authorization")
        if auth:  # a tenant for the semantic cache that never carries the credential itself
            headers[h.TENANT] = hashlib.sha256(auth.encode()).hexdigest()
        request = ClassifyRequest(
            request_id=stream.request_id,
            model=llm.model,
            messages=[Message(role=t.role, content=t.content) for t in llm.turns],
            prompt=llm.prompt,
            headers=headers,
            params=_classify_params(llm),
        )
        started = time.perf_counter()
        with _tracer.start_as_current_span("pointsman.classify", kind=SpanKind.CLIENT) as span:
            try:
                reply = await self.bus.classify(request, self.config.classifier.timeout_ms / 1000)
            except BusUnavailable as exc:
                span.set_attribute("pointsman.bus_failure", exc.kind)
                raise
            finally:
                metrics.BUS_SECONDS.labels("classifier").observe(time.perf_counter() - started)
            if reply.error is not None:  # e.g. overloaded: no decision, same policy as a timeout
                span.set_attribute("pointsman.bus_failure", reply.error)
                raise BusUnavailable("classifier", reply.error)
            span.set_attribute("pointsman.model", reply.model)
            if reply.category is not None:
                span.set_attribute("pointsman.category", reply.category)
            return reply

    async def _models(self, stream: Stream) -> envoy.ProcessingResponse:
        """``GET /v1/models`` from the picker's view of the fleet, in OpenAI's list format."""
        try:
            reply = await self.bus.models(self.config.pick_timeout_ms / 1000)
        except BusUnavailable as exc:
            self._bus_failed(exc)
            if self.config.failure_mode == "fail-closed":
                return self._reject(_unavailable(exc))
            metrics.FAIL_OPEN.labels("picker").inc()
            return envoy.request_headers(envoy.common(remove=stream.strip), mode=envoy.SKIP_BODIES)
        now = int(self.clock())
        data = [
            {"id": p.name, "object": "model", "created": p.created or now, "owned_by": "pointsman"}
            for p in sorted(reply.pools, key=lambda p: p.name)
        ]
        if self.config.classifier.enabled or self.config.default_model:
            data += [
                {"id": name, "object": "model", "created": now, "owned_by": "pointsman"}
                for name in self.config.auto_models
            ]
        metrics.REQUESTS.labels("answered").inc()
        return envoy.immediate(200, _encoder.encode({"object": "list", "data": data}))

    def _reject(self, exc: RequestError) -> envoy.ProcessingResponse:
        metrics.REJECTIONS.labels(exc.reason, str(exc.status)).inc()
        if exc.reason != "shed":
            metrics.REQUESTS.labels(
                "fail_closed" if exc.reason.startswith("bus_") else "rejected"
            ).inc()
        return envoy.immediate(
            exc.status, exc.body(), {h.ERROR: exc.reason, **exc.headers}, details=exc.reason
        )

    def _bus_failed(self, exc: BusUnavailable) -> None:
        metrics.BUS_FAILURES.labels(exc.service, exc.kind).inc()
        log.warning("bus call failed: %s", exc)

    # -- response path ------------------------------------------------------------------------

    async def _response_headers(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> envoy.ProcessingResponse:
        """Inline: read the response headers and report the decision on them."""
        served = await self._read_response_headers(stream, request)
        routed = stream.routed
        if routed is None:
            return envoy.response_headers()
        out = {h.SELECTED_MODEL: routed.model, **routed.response_headers}
        if served:
            out[h.ENDPOINT] = served
        return envoy.response_headers(envoy.common(set_headers=out))

    async def _read_response_headers(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> str | None:
        """Status, usage reader, cache fill and the served endpoint (first in ``endpoints``)."""
        headers = envoy.header_map(request.response_headers)
        try:
            stream.status = int(headers.get(":status", "0"))
        except ValueError:
            stream.status = 0
        routed = stream.routed
        if routed is None:
            return None
        sse = headers.get("content-type", "").startswith("text/event-stream")
        stream.reader = UsageReader(sse=sse)
        if stream.cache_token is not None and 200 <= stream.status < 300:
            stream.cache_fill = Reassembler(sse=sse)
        served = _served_endpoint(request) or (routed.endpoints[0] if routed.endpoints else "")
        routed.endpoints = [served, *[e for e in routed.endpoints if e != served]] if served else []
        if request.response_headers.end_of_stream:
            await self._complete(stream)
        return served or None

    async def _response_body(
        self, stream: Stream, request: envoy.ProcessingRequest
    ) -> envoy.ProcessingResponse:
        body = request.response_body
        if stream.reader is not None:
            stream.reader.feed(body.body)
        if stream.cache_fill is not None:
            stream.cache_fill.feed(body.body)
        if body.end_of_stream and stream.routed is not None and not stream.done:
            await self._complete(stream)
        return envoy.RESPONSE_BODY_CONTINUE

    async def _observe(
        self, stream: Stream, request: envoy.ProcessingRequest, which: str | None
    ) -> None:
        """An observer stream's message: the same response path, and no answer to Envoy."""
        if not stream.observer:
            stream.observer = True
            _adopt_context(stream, request, self.new_id)
            metrics.OBSERVED.labels("true" if stream.routed is not None else "false").inc()
        if stream.routed is None or stream.done:
            return  # not a request the shim routed (non-LLM path, immediate answer)
        if which == "response_headers":
            await self._read_response_headers(stream, request)
        elif which == "response_body":
            await self._response_body(stream, request)

    async def _complete(self, stream: Stream) -> None:
        stream.done = True
        routed = stream.routed
        assert routed is not None
        usage = stream.reader.finish() if stream.reader is not None else None
        status_class = f"{stream.status // 100}xx" if stream.status else "none"
        flag = "true" if stream.stream_flag else "false"
        metrics.COMPLETIONS.labels(routed.model, status_class, flag).inc()
        if usage is not None:
            if usage.prompt_tokens is not None:
                metrics.TOKENS.labels(routed.model, "prompt").inc(usage.prompt_tokens)
            if usage.completion_tokens is not None:
                metrics.TOKENS.labels(routed.model, "completion").inc(usage.completion_tokens)
        elif 200 <= stream.status < 300:
            metrics.USAGE_MISSING.labels(routed.model, flag).inc()
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
        if not self.config.publish_completions:
            return
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
                duration_ms=max(0.0, self.clock() - stream.started) * 1000,
            )
        )


def _context(stream: Stream, routed: Routed) -> dict[str, Any]:
    """What the observer stream needs of the decision, as ``pointsman`` dynamic metadata."""
    context: dict[str, Any] = {
        "request_id": stream.request_id,
        "model": routed.model,
        "route": routed.route,
        "endpoints": list(routed.endpoints),
        "stream": stream.stream_flag,
        "started": stream.started,
    }
    if stream.cache_token is not None:
        context["cache_token"] = stream.cache_token
    return context


def _adopt_context(
    stream: Stream, request: envoy.ProcessingRequest, new_id: Callable[[], str]
) -> None:
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
    stream.request_id = str(ctx.get("request_id") or stream.request_id or new_id())
    stream.stream_flag = bool(ctx.get("stream", False))
    started = ctx.get("started")
    if isinstance(started, (int, float)):
        stream.started = float(started)
    token = ctx.get("cache_token")
    stream.cache_token = token if isinstance(token, str) and token else None


def _classify_params(llm: LLMRequest) -> dict[str, Any]:
    """The request's parameters, plus what the semantic cache needs to key and render a hit."""
    params = llm.params()
    if "stop" in llm.body:
        params["stop"] = llm.body["stop"]
    if llm.include_usage:
        params["stream_options"] = {"include_usage": True}
    return params


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


def _unavailable(exc: BusUnavailable) -> RequestError:
    return RequestError(
        503,
        f"the {exc.service} is unavailable ({exc.kind}); try again later",
        reason=f"bus_{exc.service}_{exc.kind}",
        type="service_unavailable",
        code="service_unavailable",
    )
