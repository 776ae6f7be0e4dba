"""Message schemas of the v1 bus contracts.

Messages are :mod:`msgspec` structs encoded as JSON: decoding validates types at the boundary
(a malformed message raises :class:`msgspec.ValidationError` instead of travelling on as a bad
dict), it is several times faster than pydantic on the hot path, and JSON stays readable with
``nats sub``. Every field added after v1 was published must have a default.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_ENCODER = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    """Encode a message for the bus."""
    return _ENCODER.encode(message)


def decode(data: bytes, kind: type[T]) -> T:
    """Decode and validate a message of type ``kind``; raises :class:`msgspec.ValidationError`."""
    return msgspec.json.decode(data, type=kind)


class EndpointMetrics(msgspec.Struct, kw_only=True):
    """What the collector knows of one endpoint (an engine replica) at one scrape.

    ``scraped_at`` is the wall-clock time (unix seconds) of the last *successful* scrape, so a
    consumer can judge staleness itself; ``healthy`` is false when the last attempt failed.
    """

    address: str
    healthy: bool = True
    scraped_at: float = 0.0
    waiting: int = 0
    running: int = 0
    kv_usage: float = 0.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    lora_running: list[str] = msgspec.field(default_factory=list)
    lora_waiting: list[str] = msgspec.field(default_factory=list)
    max_lora: int = 0
    engine: str = "vllm"
    error: str | None = None
    # Added by the collector (optional, defaults keep older messages valid):
    #: True when ``scraped_at`` is older than the collector's ``stale_ms`` (judged at publish time).
    stale: bool = False
    #: Duration of the last scrape attempt in milliseconds.
    scrape_ms: float = 0.0
    #: KV-cache geometry (vLLM ``cache_config_info``; SGLang counts tokens, block_size 1); 0 = unknown.
    block_size: int = 0
    num_blocks: int = 0


class PoolSnapshot(msgspec.Struct, kw_only=True):
    """The state of every endpoint of one pool that a collector scrapes."""

    pool: str
    collector: str
    published_at: float
    endpoints: list[EndpointMetrics]
    # Added by the collector (optional). With several collector replicas each publishes the part
    # of the pool it scrapes: a consumer keeps the latest snapshot per (pool, collector) and takes
    # the union, newest ``scraped_at`` winning for an address seen twice during a hand-over.
    #: The collector replicas the publisher saw alive (its shard view), sorted.
    members: list[str] = msgspec.field(default_factory=list)
    #: The publisher's scrape interval, so a consumer can tell a missed beat.
    interval_ms: int = 0


class PickStatus(enum.StrEnum):
    OK = "ok"
    #: No pool of that name is known to the picker.
    UNKNOWN_MODEL = "unknown_model"
    #: The pool exists but has no endpoint that may take the request (all unhealthy or stale).
    NO_ENDPOINTS = "no_endpoints"
    #: The pool is saturated and the request's priority is too low, or flow control's queue is
    #: full (answer 429; ``reason`` says which).
    SHED = "shed"
    #: The request waited in flow control's queue and left unserved (``reason``: ``ttl_expired``;
    #: answer 503). Sent only to a shim that asked to wait (``max_wait_ms``).
    DROPPED = "dropped"


class PickRequest(msgspec.Struct, kw_only=True):
    """Ask for the endpoints of ``model``'s pool that should serve one request.

    ``subset`` is the proxy's hint (``envoy.lb.subset_hint``): when given, only these endpoints may
    be picked. ``headers`` carries the routing-relevant request headers only (lower-case names),
    never credentials. ``prompt`` is the text used for prefix-cache affinity, when the picker
    needs it.
    """

    request_id: str
    model: str
    subset: list[str] | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    prompt: str | None = None
    max_endpoints: int = 3
    #: The conversation the request belongs to, for session affinity (added after v1: a picker
    #: from before reads only the ``x-session-id`` header).
    session: str | None = None
    #: How long the shim waits for the reply beyond its pick deadline: a saturated pool's
    #: request may wait this long in flow control. ``None`` or 0: answer at once (added after v1).
    max_wait_ms: float | None = None
    #: ``model: auto``: the classifier's ranked candidate models with their quality scores,
    #: ``model`` first. The picker chooses the (model, endpoint) pair; its reply's ``model``
    #: says which. Added after v1: a picker from before picks for ``model`` only.
    candidates: list[ModelCandidate] | None = None


class ModelCandidate(msgspec.Struct, kw_only=True):
    """A model that may serve a request, and how good the classifier expects its answer."""

    model: str
    score: float


class PickReply(msgspec.Struct, kw_only=True):
    """The picker's answer: ``endpoints`` is ordered best first (primary, then fallbacks)."""

    status: PickStatus
    endpoints: list[str] = msgspec.field(default_factory=list)
    prefill: str | None = None
    reason: str | None = None
    picker: str = ""
    scores: dict[str, float] = msgspec.field(default_factory=dict)
    #: Set when the request named ``candidates``: the model chosen (its endpoints are in
    #: ``endpoints``), its rank among the candidates (0 = the first) and why.
    model: str | None = None
    model_rank: int | None = None
    model_reason: str | None = None


class ModelsRequest(msgspec.Struct, kw_only=True):
    """Ask which models (pools) are served; empty by design."""


class PoolInfo(msgspec.Struct, kw_only=True):
    name: str
    endpoints: int
    healthy: int
    created: int = 0


class ModelsReply(msgspec.Struct, kw_only=True):
    pools: list[PoolInfo]


class CompletionEvent(msgspec.Struct, kw_only=True):
    """Published by the shim when a routed response has ended.

    Token counts come from the response's ``usage`` (JSON body, or the final SSE chunk when the
    client asked for ``stream_options.include_usage``); they are ``None`` when the engine did not
    report usage.
    """

    request_id: str
    model: str
    endpoint: str
    status_code: int
    stream: bool
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    duration_ms: float = 0.0
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    # Added after v1 (``None``: not measured), what the picker's latency predictor learns from:
    #: Time to first token: from the request's arrival to the first body chunk of a streamed
    #: answer (``None`` for an answer that was not streamed).
    ttft_ms: float | None = None
    #: Time per output token after the first, of a streamed answer that reported its usage.
    tpot_ms: float | None = None
    #: Prompt tokens the engine served from its prefix cache (``usage.prompt_tokens_details``).
    cached_tokens: int | None = None


class CollectorAnnounce(msgspec.Struct, kw_only=True):
    """A collector replica's membership heartbeat (read only by the other collector replicas)."""

    member: str
    active: bool = True
    leaving: bool = False
    endpoints: int = 0
    #: Digest of the replica's discovered endpoints: replicas that disagree would leave some
    #: endpoints to an owner that does not know them, so a lasting difference is logged.
    view: str = ""
