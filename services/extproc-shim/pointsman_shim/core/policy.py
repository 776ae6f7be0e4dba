"""The shim's routing policy: which model, which endpoints, which answer. Pure: no I/O, no clock.

A request's decision takes two steps around the two bus calls the handler makes:

1. :func:`choose`: from the classifier's reply (or how the call failed, or ``None`` when no
   classifier is asked), the model to ask the picker for (a :class:`Choice`), or an
   :class:`Answer` that ends the request (a block, a semantic-cache hit, a rejection).
2. :func:`route`: from the picker's reply (or how the call failed), the :class:`Route` upstream,
   or an :class:`Answer` (unknown model, no endpoint, shed, fail-closed).

:func:`list_models` answers ``GET /v1/models``; :func:`reject` turns a :class:`RequestError` into
an :class:`Answer` in the request's API format. Every decision says how it counts (the
``outcome`` label of ``pointsman_shim_requests_total``, a rejection's ``reason``, the services that
failed open), so the handler counts without deciding anything. :func:`classify_request` and
:func:`pick_request` say what the classifier and the picker are told.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from pointsman.v1 import ModelCandidate, ModelsReply, PickReply, PickRequest, PickStatus
from pointsman.v1.classify import ClassifyReply, ClassifyRequest, Message
from pointsman_shim.config import ClassifierCall, ShimConfig
from pointsman_shim.core import headers as h
from pointsman_shim.core.dialects import openai_chat
from pointsman_shim.core.dialects.base import (
    BodyChanges,
    Dialect,
    ErrorFormat,
    LLMRequest,
    Upstream,
)
from pointsman_shim.core.errors import RequestError
from pointsman_shim.core.rewrite import Rewrites
from pointsman_shim.core.sessions import Session

MODELS_PATH = "/v1/models"
_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class Unavailable:
    """A bus call that brought no decision: ``service`` is ``classifier`` or ``picker``; ``kind``
    is ``timeout``, ``no_responders``, ``disconnected``, ``bad_reply``, or the classifier's own
    ``error`` (``overloaded``, ``bad_request``), which gets the same policy as a timeout."""

    service: str
    kind: str


@dataclass(slots=True)
class Answer:
    """Answer the client now; nothing goes upstream.

    ``outcome`` is the label counted in ``pointsman_shim_requests_total``; a rejection also has
    its ``reason`` (``x-pointsman-error``, ``pointsman_shim_rejections_total``, Envoy's details).
    ``fail_open`` names the services that failed open before the answer was decided.
    """

    status: int
    body: bytes
    headers: dict[str, str]
    outcome: str
    content_type: str = "application/json"
    reason: str = ""
    fail_open: tuple[str, ...] = ()
    #: What the API keeps of the answer (a cache hit's Responses object), when it keeps any.
    state: dict[str, Any] | None = None


@dataclass(slots=True)
class Passthrough:
    """Let the request take Envoy's own route untouched, its bodies unseen.

    ``outcome`` is ``None`` when the request is not counted as one of the shim's requests (a
    model list that failed open).
    """

    outcome: str | None = "passthrough"
    fail_open: tuple[str, ...] = ()


@dataclass(slots=True)
class Choice:
    """The model to ask the picker for, and what else the classifier (or its absence) decided.

    ``route`` is ``default-model`` when an auto name went to ``shim.default_model`` because no
    classifier was asked; ``headers`` are the report headers so far. ``rewrite`` names the
    InferenceModelRewrite that moved the model, when one did.
    """

    changes: BodyChanges
    route: str = "picked"
    headers: dict[str, str] = field(default_factory=dict)
    cache_token: str | None = None
    fail_open: tuple[str, ...] = ()
    rewrite: str | None = None
    #: ``model: auto``: the classifier's ranked candidates (the model first), for the picker's
    #: joint choice of model and endpoint; empty: the model is decided.
    candidates: list[ModelCandidate] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.changes.model


@dataclass(slots=True)
class Route:
    """Send the request upstream.

    ``route`` is ``picked``, ``default-model``, ``selected`` (model-selector mode: the gateway's
    pool picker chooses) or ``fail-open`` (the picker did not answer or had no endpoint: Envoy's
    own load balancing);
    ``endpoints`` are ordered best first. ``headers`` are the report headers, set on
    the routed request and, when the shim sees the response, on the response. ``body`` is the new
    request body (``None``: the client's bytes), ``path`` a new ``:path`` (a dialect that
    translates to another API). ``cache_token`` asks for the answer to be stored.
    """

    model: str
    route: str
    endpoints: list[str]
    headers: dict[str, str]
    body: bytes | None = None
    path: str | None = None
    cache_token: str | None = None
    fail_open: tuple[str, ...] = ()
    #: The request goes upstream in chat completions, not the client's API (a translating
    #: dialect and a ``chat`` pool): its answer must be translated back.
    translated: bool = False
    #: The dialect whose readers read the upstream's answer (``None``: the request's own).
    speaks: str | None = None

    @property
    def outcome(self) -> str:
        return "fail_open" if self.route == "fail-open" else "routed"

    def request_headers(self) -> dict[str, str]:
        """The headers set on the routed request: model, report headers, path, endpoints."""
        out = {h.SELECTED_MODEL: self.model, **self.headers}
        if self.path is not None:
            out[":path"] = self.path
        if self.endpoints:
            out[h.DESTINATION] = ",".join(self.endpoints)
        return out


# -- what the services are told ----------------------------------------------------------------


def tenant(headers: Mapping[str, str]) -> str:
    """SHA-256 of the request's ``authorization`` (``""`` without one): who a request is for,
    without the credential itself. The semantic cache, sessions and the Responses store keep
    each tenant's entries apart by it."""
    auth = headers.get("authorization")
    return hashlib.sha256(auth.encode()).hexdigest() if auth else ""


def classify_request(
    request: LLMRequest,
    headers: Mapping[str, str],
    request_id: str,
    session: Session | None = None,
    *,
    debug: bool = False,
    budget_ms: float | None = None,
) -> ClassifyRequest:
    """The normalised request and the headers the classifier's policies read; ``budget_ms``:
    how long the shim waits for the answer (the classifier admits only what it can answer
    within it).

    The request's ``authorization`` travels only as its SHA-256, a tenant for the semantic cache
    that never carries the credential itself. ``x-pointsman-debug`` travels only with ``debug``.
    """
    forwarded = h.forwarded(headers, debug=debug)
    who = tenant(headers)
    if who:
        forwarded[h.TENANT] = who
    return ClassifyRequest(
        request_id=request_id,
        model=request.model,
        messages=[Message(role=t.role, content=t.content) for t in request.turns],
        prompt=request.prompt,
        headers=forwarded,
        params=request.params,
        session=session.id if session is not None else None,
        follow_up=session.follow_up if session is not None else False,
        budget_ms=budget_ms,
    )


def classify_timeout_ms(call: ClassifierCall, request: ClassifyRequest) -> float:
    """How long to wait for the classifier's answer to ``request``: ``timeout_ms``, plus
    ``timeout_per_kchar_ms`` per 1,000 characters beyond the first 1,000, at most
    ``max_timeout_ms``. A fixed deadline made every long document fail its safety checks on a
    CPU classifier (1,300 tokens took about 1 s against 150 ms): a 503 for ordinary use."""
    chars = sum(len(m.content) for m in request.messages) + len(request.prompt or "")
    extra = call.timeout_per_kchar_ms * max(0, chars - 1000) / 1000
    return min(call.timeout_ms + extra, call.longest_ms)


def pick_request(
    request: LLMRequest,
    model: str,
    headers: Mapping[str, str],
    request_id: str,
    subset: list[str] | None,
    config: ShimConfig,
    session: Session | None = None,
    *,
    debug: bool = False,
    candidates: list[ModelCandidate] | None = None,
) -> PickRequest:
    """What the picker is told; ``candidates`` (the classifier's, ``model`` first) let it choose
    the model too."""
    forwarded = h.forwarded(headers, debug=debug)
    who = tenant(headers)
    if who:  # flow control's default tenant: the credential's hash, never the client's word
        forwarded[h.TENANT] = who
    usable = (
        candidates if candidates and len(candidates) > 1 and candidates[0].model == model else None
    )
    return PickRequest(
        request_id=request_id,
        model=model,
        subset=subset,
        headers=forwarded,
        prompt=request.prompt_text() if config.send_prompt else None,
        max_endpoints=config.max_endpoints,
        session=session.id if session is not None else None,
        max_wait_ms=config.queue_wait_ms or None,
        candidates=usable,
    )


# -- the decision ------------------------------------------------------------------------------


def choose(
    request: LLMRequest,
    dialect: Dialect,
    classified: ClassifyReply | Unavailable | None,
    config: ShimConfig,
    *,
    now: float,
    nonce: Callable[[], str],
) -> Choice | Answer:
    """Step 1: the model, from the classifier's reply; ``None`` when no classifier is asked.

    ``now`` (Unix time) and ``nonce()`` (a unique string, asked for only then) go into a cache
    hit's response.
    """
    auto = request.model in config.auto_models
    if classified is None:
        if auto:
            return _default_model(request, dialect, config, route="default-model")
        return Choice(BodyChanges(request.model))
    if isinstance(classified, Unavailable):
        call = config.classifier
        if call.failure_mode == "fail-closed":
            return reject(unavailable(classified), dialect)
        # No safety verdict: a classifier that blocks must not be skipped (``None``: not known,
        # so assume it does, as the classifier's defaults do).
        if call.safety_failure_mode == "fail-closed" and call.safety_blocks is not False:
            return reject(no_verdict(classified), dialect)
        headers = {h.ROUTE_CLASSIFIER: "fail-open"}
        if auto:
            return _default_model(
                request, dialect, config, headers=headers, fail_open=("classifier",)
            )
        return Choice(BodyChanges(request.model), headers=headers, fail_open=("classifier",))
    reply = classified
    if reply.block is not None:
        b = reply.block
        return Answer(
            b.status,
            dialect.error_body(b.message, type=b.type, code=b.code, status=b.status),
            {h.BLOCK_REASON: b.reason, **reply.headers},
            outcome="blocked",
        )
    if reply.cached is not None:
        rendered = dialect.render_cached(
            request,
            reply.cached,
            model=reply.model or reply.cached.model,
            nonce=nonce(),
            created=int(now),
        )
        return Answer(
            200,
            rendered.body,
            dict(reply.headers),
            outcome="answered",
            content_type=rendered.content_type,
            state=rendered.state,
        )
    if reply.answer is not None:  # a classifier from before ``cached``: already rendered
        a = reply.answer
        return Answer(
            a.status, a.body, dict(reply.headers), outcome="answered", content_type=a.content_type
        )
    return Choice(
        BodyChanges(
            reply.model,
            reply.body_set,
            reply.system_prompt,
            reply.system_prompt_mode,
            reasoning=reply.reasoning,
        ),
        headers=dict(reply.headers),
        cache_token=reply.cache_store,
        candidates=list(reply.candidates) if reply.selected else [],
    )


def rewrite(choice: Choice, rewrites: Rewrites, key: str) -> Choice:
    """The choice after the model-name rewrites (InferenceModelRewrite): the target drawn for
    this request (``key``: its id) in place of the model, named in ``x-pointsman-rewrite``."""
    moved = rewrites.apply(choice.model, key) if rewrites else None
    if moved is None:
        return choice
    choice.changes.model = moved.model
    choice.candidates = []  # the rewrite decided the model
    choice.headers[h.REWRITE] = moved.model
    choice.rewrite = moved.rewrite
    return choice


@dataclass(slots=True)
class Refused(Unavailable):
    """A pick reply that names an endpoint discovery does not know for the model: never routed
    to, and then handled as a picker that did not answer (the configured failure mode).
    ``reason``: ``not_in_pool`` (the model's pool is known and lacks it) or ``unknown_pool``
    (no pool known for the model holds it)."""

    reason: str = ""
    endpoints: tuple[str, ...] = ()


def vet_pick(
    reply: PickReply, model: str, known: Mapping[str, frozenset[str]]
) -> PickReply | Refused:
    """Route only to known endpoints: every endpoint a pick reply names (and its prefill
    endpoint) must belong to ``model``'s pool as discovery knows it (``known``: pool -> its
    ``ip:port`` addresses, from the collectors' snapshots and the static ``pools``).

    A model that is not a pool's name (a LoRA adapter the picker maps to its base model) may be
    served by any one known pool, as long as every endpoint belongs to it. This holds whatever
    the bus delivers: a forged or compromised reply can only name real model servers.
    """
    if reply.status is not PickStatus.OK:
        return reply
    named = [*reply.endpoints, *([reply.prefill] if reply.prefill else [])]
    pool = known.get(model)
    if pool is not None:
        outside = tuple(e for e in named if e not in pool)
        if not outside:
            return reply
        return Refused("picker", "unknown_endpoint", "not_in_pool", outside)
    if any(all(e in members for e in named) for members in known.values()):
        return reply
    return Refused("picker", "unknown_endpoint", "unknown_pool", tuple(named))


def prepare(request: LLMRequest, dialect: Dialect, choice: Choice, config: ShimConfig) -> Upstream:
    """What goes upstream for the chosen model: the dialect's rewrite, told how the model's pool
    serves the API (``shim.apis``). Asked before the picker, so that a request the pool cannot
    take (a built-in tool a translation has no equivalent for) is refused before an endpoint is
    reserved for it; raises :class:`RequestError`."""
    api = getattr(dialect, "api", None)
    if isinstance(api, str):
        choice.changes.upstream = config.apis.mode(api, choice.model)
    return dialect.rewrite(request, choice.changes)


def route(
    request: LLMRequest,
    dialect: Dialect,
    choice: Choice,
    picked: PickReply | Unavailable | None,
    config: ShimConfig,
    *,
    debug: bool = False,
    upstream: Upstream | None = None,
    hinted: bool = False,
    report_choice: bool = False,
) -> Route | Answer:
    """Step 2: the endpoints, from the picker's reply; ``debug`` reports the picker's scores.
    ``upstream`` is :func:`prepare`'s answer when the caller asked it before the picker.
    ``picked`` is ``None`` in model-selector mode: no endpoints, the gateway's pool picks.

    ``no_endpoints`` fails open (Envoy's own load balancing, counted as the ``no_endpoints``
    service in ``fail_open``) under the ``fail-open`` policy, except for a request whose gateway
    sent a subset hint (``hinted``): Envoy may not route outside the subset, so that is a 503.

    A reply that chose another of the choice's candidates (``picked.model``) moves the request
    to that model; ``report_choice`` (``debug.report_model_choice``) says so in
    ``x-pointsman-model-choice``."""
    if (
        isinstance(picked, PickReply)
        and picked.status is PickStatus.OK
        and picked.model
        and picked.model != choice.model
        and any(c.model == picked.model for c in choice.candidates)
    ):
        choice.changes.model = picked.model
        upstream = None  # prepared for the first candidate: prepare again
        if report_choice:
            rank = picked.model_rank or 0
            label = ("first", "second", "third")[rank] if rank < 3 else str(rank + 1)
            choice.headers[h.MODEL_CHOICE] = f"{label}; reason={picked.model_reason or ''}"
    model = choice.model
    headers = dict(choice.headers)
    endpoints: list[str] = []
    label = choice.route
    fail_open = choice.fail_open
    if picked is None:
        if label == "picked":
            label = "selected"
    elif isinstance(picked, Unavailable):
        if config.failure_mode == "fail-closed":
            return reject(unavailable(picked), dialect, fail_open)
        fail_open = (*fail_open, "picker")
        label = "fail-open"
    elif picked.status is PickStatus.UNKNOWN_MODEL:
        return reject(_unknown(f"The model '{model}' does not exist."), dialect, fail_open)
    elif (
        picked.status is PickStatus.NO_ENDPOINTS
        and config.failure_mode == "fail-open"
        and (not hinted)
    ):
        # The picker knows no endpoint that can take it: Envoy's own load balancing over the
        # pool (with its health checks) is the better judge than a 503.
        fail_open = (*fail_open, "no_endpoints")
        label = "fail-open"
    elif picked.status is PickStatus.NO_ENDPOINTS:
        detail = f" ({picked.reason})" if picked.reason else ""
        error = RequestError(
            503,
            f"no endpoint of model '{model}' can take the request now{detail}",
            reason="no_endpoints",
            type="service_unavailable",
        )
        return reject(error, dialect, fail_open)
    elif picked.status is PickStatus.SHED:
        why = picked.reason or "saturated"
        message = (
            f"model '{model}' is saturated and its queue is full ({why}); retry later"
            if why in ("queue_full", "tenant_queue_full")
            else f"no endpoint of model '{model}' is predicted to meet this request's latency "
            "objective (x-pointsman-slo-ttft-ms / -tpot-ms); retry later or relax it"
            if why == "slo_unattainable"
            else f"model '{model}' is saturated and this request's priority is too low; retry later"
        )
        error = RequestError(
            429,
            message,
            reason="shed",
            type="rate_limit_exceeded",
            headers={h.SHED_REASON: why, h.DROP_REASON: why},
        )
        return reject(error, dialect, fail_open)
    elif picked.status is PickStatus.DROPPED:
        why = picked.reason or "ttl_expired"
        error = RequestError(
            503,
            f"model '{model}' stayed saturated while the request waited ({why}); retry later",
            reason="dropped",
            type="service_unavailable",
            headers={h.DROP_REASON: why},
        )
        return reject(error, dialect, fail_open)
    else:
        endpoints = picked.endpoints[: config.max_endpoints]
        if picked.prefill:
            headers[h.PREFILLER] = picked.prefill
        if picked.scores and debug:
            headers[h.SCORES] = _encoder.encode(picked.scores).decode()
    headers[h.ROUTE] = label
    if upstream is None:
        upstream = prepare(request, dialect, choice, config)
    return Route(
        model,
        label,
        endpoints,
        headers,
        body=upstream.body,
        path=upstream.path,
        cache_token=choice.cache_token,
        fail_open=fail_open,
        translated=choice.changes.upstream == "chat",
        speaks=upstream.speaks,
    )


def list_models(
    reply: ModelsReply | Unavailable | None, config: ShimConfig, *, now: float
) -> Answer | Passthrough:
    """``GET /v1/models`` from the picker's view of the fleet, in OpenAI's list format, with the
    auto names when something can resolve them (a classifier, a default model). ``None``: there
    is no picker to ask (model-selector mode), the request passes to the gateway's route."""
    if reply is None:  # model-selector mode: the pools' own routers list their models
        return Passthrough()
    if isinstance(reply, Unavailable):
        if config.failure_mode == "fail-closed":
            return reject(unavailable(reply), openai_chat.DIALECT)
        return Passthrough(outcome=None, fail_open=("picker",))
    created = int(now)
    data = [
        {"id": p.name, "object": "model", "created": p.created or created, "owned_by": "pointsman"}
        for p in sorted(reply.pools, key=lambda p: p.name)
    ]
    if config.classifier.enabled or config.default_model:
        data += [
            {"id": name, "object": "model", "created": created, "owned_by": "pointsman"}
            for name in config.auto_models
        ]
    return Answer(200, _encoder.encode({"object": "list", "data": data}), {}, outcome="answered")


def reject(error: RequestError, errors: ErrorFormat, fail_open: tuple[str, ...] = ()) -> Answer:
    """The error answer to ``error``, its body in the format of the request's API."""
    if error.reason in ("shed", "dropped"):
        outcome = "shed"
    elif error.reason.startswith("bus_") or error.reason == "safety_unavailable":
        outcome = "fail_closed"
    else:
        outcome = "rejected"
    return Answer(
        error.status,
        errors.error_body(
            error.message, type=error.type, code=error.code, param=error.param, status=error.status
        ),
        {h.ERROR: error.reason, **error.headers},
        outcome=outcome,
        reason=error.reason,
        fail_open=fail_open,
    )


#: How a classifier failure reads in a client's error message.
_WHY = {
    "timeout": "did not answer in time",
    "overloaded": "is overloaded",
    "no_responders": "is not running",
    "disconnected": "is unreachable",
    "bad_reply": "gave an unreadable answer",
    "bad_request": "could not read the request",
    "internal": "failed",
}
#: Seconds a client is told to wait (``Retry-After``) when no safety verdict could be had.
SAFETY_RETRY_AFTER_S = 1


def no_verdict(failure: Unavailable) -> RequestError:
    """The 503 of ``classifier.safety_failure_mode: fail-closed``: the safety checks could not
    run, so the request is not routed without them."""
    why = _WHY.get(failure.kind, failure.kind.replace("_", " "))
    return RequestError(
        503,
        f"the safety checks could not run (the classifier {why}); try again later",
        reason="safety_unavailable",
        type="service_unavailable",
        code="service_unavailable",
        headers={"retry-after": str(SAFETY_RETRY_AFTER_S)},
    )


def unavailable(failure: Unavailable) -> RequestError:
    """The 503 of a ``fail-closed`` policy."""
    return RequestError(
        503,
        f"the {failure.service} is unavailable ({failure.kind}); try again later",
        reason=f"bus_{failure.service}_{failure.kind}",
        type="service_unavailable",
        code="service_unavailable",
    )


def _default_model(
    request: LLMRequest,
    dialect: Dialect,
    config: ShimConfig,
    *,
    route: str = "picked",
    headers: dict[str, str] | None = None,
    fail_open: tuple[str, ...] = (),
) -> Choice | Answer:
    """An auto name with nobody to choose: ``shim.default_model``, or 404 without one."""
    if config.default_model is None:
        error = _unknown(
            f"The model '{request.model}' asks Pointsman to choose a model, but no classifier "
            "is enabled and shim.default_model is not set.",
        )
        return reject(error, dialect, fail_open)
    return Choice(
        BodyChanges(config.default_model), route=route, headers=headers or {}, fail_open=fail_open
    )


def _unknown(message: str) -> RequestError:
    return RequestError(404, message, reason="unknown_model", code="model_not_found", param="model")
