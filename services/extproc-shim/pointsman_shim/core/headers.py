"""Which request headers the shim trusts, forwards, or strips.

A client must never choose its own endpoint: every header that carries a routing decision is
removed from the client's request and only ever set by the shim.
"""

from __future__ import annotations

from collections.abc import Mapping

from pointsman.v1 import headers as reported

DESTINATION = "x-gateway-destination-endpoint"
DESTINATION_SERVED = "x-gateway-destination-endpoint-served"
SUBSET = "x-gateway-destination-endpoint-subset"
PREFILLER = reported.PREFILLER
SELECTED_MODEL = reported.SELECTED_MODEL
ENDPOINT = reported.ENDPOINT
ROUTE = reported.ROUTE
ROUTE_CLASSIFIER = reported.ROUTE_CLASSIFIER
SCORES = reported.SCORES
SESSION = reported.SESSION
REWRITE = reported.REWRITE
SESSION_ID = "x-session-id"
ERROR = "x-pointsman-error"
SHED_REASON = "x-pointsman-shed-reason"
#: Why a request left flow control unserved: ``queue_full``, ``tenant_queue_full`` (429),
#: ``ttl_expired`` (503); also on a ``saturated`` shed.
DROP_REASON = "x-pointsman-drop-reason"
BLOCK_REASON = "x-pointsman-block-reason"
#: Set by the shim only: SHA-256 of the request's ``authorization``; sent to the classifier
#: (cache tenant) and the picker (flow control's default tenant).
TENANT = "x-pointsman-tenant"

LB_NAMESPACE = "envoy.lb"
SUBSET_NAMESPACE = "envoy.lb.subset_hint"

DEBUG = "x-pointsman-debug"

#: Set only by the shim: any client-sent value is removed before routing.
ROUTING_HEADERS = (DESTINATION, DESTINATION_SERVED, SUBSET, PREFILLER, SELECTED_MODEL)
#: What an endpoint picker behind another model selector (``shim.mode: picker``) removes: the
#: endpoint headers only; the model and the report headers are the selector's.
ENDPOINT_HEADERS = (DESTINATION, DESTINATION_SERVED, SUBSET, PREFILLER)
#: A request's latency objective in milliseconds (ours, and llm-d's names), read by the picker.
SLO_HEADERS = (
    "x-pointsman-slo-ttft-ms",
    "x-pointsman-slo-tpot-ms",
    "x-llm-d-slo-ttft-ms",
    "x-llm-d-slo-tpot-ms",
)
MODEL_CHOICE = reported.MODEL_CHOICE
#: Client headers of ours that are inputs, not decisions; kept and forwarded to the services.
CLIENT_INPUTS = frozenset(
    {
        "x-pointsman-priority",
        "x-pointsman-debug",
        "x-pointsman-slo-ttft-ms",
        "x-pointsman-slo-tpot-ms",
    }
)
#: Request headers the picker and classifier read (never credentials).
FORWARDED = frozenset(
    {
        "x-session-id",
        "x-llm-d-inference-objective",
        "x-gateway-inference-objective",
        "x-pointsman-priority",
        "x-pointsman-debug",
        "x-tenant-id",
        "cache-control",
        *SLO_HEADERS,
    }
)


def to_strip(names: list[str], *, keep_reports: bool = False) -> list[str]:
    """The client-sent headers (lower-case names) that must be removed before routing.

    ``keep_reports``: the shim is the endpoint picker behind another stage that chose the model
    (``shim.mode: picker``); the headers that stage set are kept, only endpoint headers go.
    """
    if keep_reports:
        return [name for name in names if name in ENDPOINT_HEADERS]
    out = []
    for name in names:
        if name in ROUTING_HEADERS or (
            name.startswith("x-pointsman-") and name not in CLIENT_INPUTS
        ):
            out.append(name)
    return out


def forwarded(headers: Mapping[str, str], *, debug: bool = False) -> dict[str, str]:
    """The headers the services read; ``x-pointsman-debug`` only when the request may have
    debug output (``pointsman.debug.allowed``)."""
    return {k: v for k, v in headers.items() if k in FORWARDED and (debug or k != DEBUG)}
