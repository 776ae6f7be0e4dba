"""NATS subjects and queue groups of the v1 contracts.

Request-reply subjects are served by a queue group, so every replica of a service shares the
load and adding a replica needs no configuration. Pub/sub subjects carry a pool (model) name as
their last token so a subscriber takes only the pools it needs.
"""

from __future__ import annotations

PREFIX = "pointsman.v1"

#: Request-reply, shim -> picker: :class:`~pointsman.v1.messages.PickRequest` ->
#: :class:`~pointsman.v1.messages.PickReply`.
PICK = f"{PREFIX}.pick"
#: Request-reply, shim -> picker: :class:`~pointsman.v1.messages.ModelsRequest` ->
#: :class:`~pointsman.v1.messages.ModelsReply` (the served models, for ``GET /v1/models``).
MODELS = f"{PREFIX}.models"
#: Pub/sub, collector -> pickers: one :class:`~pointsman.v1.messages.PoolSnapshot` per pool.
METRICS_PREFIX = f"{PREFIX}.metrics"
#: Pub/sub, shim -> anyone: :class:`~pointsman.v1.messages.CompletionEvent` per finished response.
COMPLETIONS = f"{PREFIX}.completions"

PICKER_QUEUE = "pointsman-picker"


def metrics(pool: str) -> str:
    """The subject that carries snapshots of one pool."""
    return f"{METRICS_PREFIX}.{token(pool)}"


METRICS_ALL = f"{METRICS_PREFIX}.>"
#: JetStream KV bucket with each collector replica's latest snapshot of each pool, for consumers
#: that start late: key ``<token(pool)>.<collector id>``, value an encoded ``PoolSnapshot``.
METRICS_BUCKET = "pointsman-metrics"
#: Pub/sub among collector replicas only: membership heartbeats for splitting the endpoints.
COLLECTOR_HEARTBEAT = f"{PREFIX}.collector.heartbeat"


def token(name: str) -> str:
    """Turn a model name into one NATS subject token.

    Model names contain '.', '/' and ':' (``meta-llama/Llama-3.1-8B``), which NATS treats as
    separators or would reject; they are escaped reversibly as ``_XX`` hex codes.
    """
    out = []
    for ch in name:
        if ch.isalnum() or ch in "-":
            out.append(ch)
        else:
            out.append(f"_{ord(ch):02X}")
    return "".join(out)
