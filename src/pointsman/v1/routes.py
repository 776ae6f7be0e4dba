"""Every bus route of the v1 contracts, declared once: subject, request type, reply type, queue.

Both sides of a route use the same declaration: the side that asks or publishes encodes with it
and decodes the reply with it; the side that serves subscribes to ``subject`` in ``queue`` and
decodes with it. A route whose ``reply`` is ``None`` is pub/sub (no answer). A route with an empty
``queue`` is fan-out: every subscriber gets every message (each picker needs every snapshot); a
named queue group shares the messages between a service's replicas (one picker answers a pick).

Each route also says **who** sends on it and who receives it (``senders``, ``receivers``: the
service identities of :data:`IDENTITIES`). :mod:`pointsman.natsauth` turns exactly these
declarations into the nats-server ``authorization`` block, so the subject permissions every
deployment enforces cannot drift from the routes the services use.

Decoders are built once per route (``msgspec.json.Decoder``): a third faster than
``msgspec.json.decode(data, type=...)`` on the picker's hot path, and the same validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from pointsman.v1 import cache, classify, policy, subjects
from pointsman.v1.cache import CacheEvent, CacheStore
from pointsman.v1.classify import ClassifyReply, ClassifyRequest
from pointsman.v1.messages import (
    CollectorAnnounce,
    CompletionEvent,
    ModelsReply,
    ModelsRequest,
    PickReply,
    PickRequest,
    PoolSnapshot,
)
from pointsman.v1.policy import InferencePolicy

#: The service identities: each has its own NATS credentials and the permissions its routes give.
SHIM = "shim"
PICKER = "picker"
CLASSIFIER = "classifier"
COLLECTOR = "collector"
IDENTITIES: tuple[str, ...] = (SHIM, PICKER, CLASSIFIER, COLLECTOR)

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep", bound=msgspec.Struct)

_ENCODER = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Route(Generic[Req, Rep]):
    """One bus route. ``subject`` may end in a wildcard (``>``) on the subscribing side; the
    publisher then names the concrete subject (``subjects.metrics(pool)``).

    ``senders`` publish requests (or events) on it; ``receivers`` subscribe to it and, for a
    request-reply route, answer (NATS ``allow_responses``): nobody else may do either.
    """

    subject: str
    request: type[Req]
    reply: type[Rep] | None = None
    queue: str = ""
    senders: frozenset[str] = frozenset()
    receivers: frozenset[str] = frozenset()
    _decode_request: msgspec.json.Decoder[Req] = field(init=False, repr=False, compare=False)
    _decode_reply: msgspec.json.Decoder[Rep] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_decode_request", msgspec.json.Decoder(self.request))
        reply = msgspec.json.Decoder(self.reply) if self.reply is not None else None
        object.__setattr__(self, "_decode_reply", reply)

    def encode(self, message: msgspec.Struct) -> bytes:
        """Encode a request (or event) or a reply of this route for the bus."""
        return _ENCODER.encode(message)

    def decode(self, data: bytes) -> Req:
        """Decode and validate a request; raises :class:`msgspec.DecodeError` (its subclass
        ``ValidationError`` for a well-formed message of the wrong shape)."""
        return self._decode_request.decode(data)

    def decode_reply(self, data: bytes) -> Rep:
        """Decode and validate a reply; raises like :meth:`decode`."""
        if self._decode_reply is None:
            raise TypeError(f"route {self.subject} has no reply")
        return self._decode_reply.decode(data)

    def on(self, subject: str) -> Route[Req, Rep]:
        """The same route on another subject (a configured one, or one pool's subject)."""
        return Route(subject, self.request, self.reply, self.queue, self.senders, self.receivers)


@dataclass(frozen=True, slots=True)
class Bucket:
    """A JetStream key-value bucket: ``writers`` create it and put entries, ``readers`` get and
    watch them; nobody else may touch it."""

    name: str
    writers: frozenset[str]
    readers: frozenset[str] = frozenset()


def _asked(
    subject: str, request: type[Req], reply: type[Rep], queue: str, sender: str, receiver: str
) -> Route[Req, Rep]:
    """A request-reply route: ``sender`` asks, one replica of ``receiver`` (``queue``) answers."""
    return Route(subject, request, reply, queue, frozenset({sender}), frozenset({receiver}))


def _published(
    subject: str, message: type[Req], sender: str, receivers: set[str], queue: str = ""
) -> Route[Req, Any]:
    """A pub/sub route: ``sender`` publishes, every subscriber of ``receivers`` gets each
    message, or one replica of the ``queue`` group does."""
    return Route(subject, message, None, queue, frozenset({sender}), frozenset(receivers))


#: Request-reply, shim -> one picker: the endpoints to route one request to.
PICK = _asked(subjects.PICK, PickRequest, PickReply, subjects.PICKER_QUEUE, SHIM, PICKER)
#: Request-reply, shim -> one picker: the served models, for ``GET /v1/models``.
MODELS = _asked(subjects.MODELS, ModelsRequest, ModelsReply, subjects.PICKER_QUEUE, SHIM, PICKER)
#: Request-reply, shim -> one classifier: model choice and safety checks.
CLASSIFY = _asked(
    classify.CLASSIFY, ClassifyRequest, ClassifyReply, classify.CLASSIFIER_QUEUE, SHIM, CLASSIFIER
)
#: Pub/sub, collector -> every picker: one snapshot per pool, on ``subjects.metrics(pool)``.
#: The shim reads them too: the pools' membership, the only endpoints it ever routes to.
SNAPSHOTS = _published(subjects.METRICS_ALL, PoolSnapshot, COLLECTOR, {PICKER, SHIM})
#: Pub/sub, shim -> every picker: one event per finished response.
COMPLETIONS = _published(subjects.COMPLETIONS, CompletionEvent, SHIM, {PICKER})
#: Pub/sub into a queue group, shim -> one classifier: store a complete answer in the cache.
CACHE_STORE = _published(cache.CACHE_STORE, CacheStore, SHIM, {CLASSIFIER}, cache.CACHE_STORE_QUEUE)
#: Pub/sub, classifier -> every classifier: cache entries added or removed.
CACHE_EVENTS = _published(cache.CACHE_EVENTS, CacheEvent, CLASSIFIER, {CLASSIFIER})
#: Pub/sub among collector replicas: membership heartbeats (``collector.sharding.subject``).
COLLECTOR_HEARTBEAT = _published(
    subjects.COLLECTOR_HEARTBEAT, CollectorAnnounce, COLLECTOR, {COLLECTOR}
)
#: Pub/sub, collector -> every shim and picker: InferenceObjectives and InferenceModelRewrites.
POLICY = _published(policy.POLICY, InferencePolicy, COLLECTOR, {PICKER, SHIM})
#: JetStream KV, collector -> pickers: each collector replica's latest snapshot of each pool
#: (``collector.latest.bucket``).
METRICS_BUCKET = Bucket(subjects.METRICS_BUCKET, frozenset({COLLECTOR}), frozenset({PICKER}))

#: Every route, for documentation and tests.
ALL: tuple[Route[Any, Any], ...] = (
    PICK,
    MODELS,
    CLASSIFY,
    SNAPSHOTS,
    COMPLETIONS,
    CACHE_STORE,
    CACHE_EVENTS,
    COLLECTOR_HEARTBEAT,
    POLICY,
)
#: Every JetStream bucket.
BUCKETS: tuple[Bucket, ...] = (METRICS_BUCKET,)
