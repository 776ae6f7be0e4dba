"""Prometheus metrics of the shim. Names follow ``pointsman_shim_*``; labels stay low-cardinality."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from pointsman.runtime import Children

#: ``child(METRIC, *labels)``: ``METRIC.labels(*labels)`` without its per-call cost, for the
#: children every request touches.
child = Children()

REQUESTS = Counter(
    "pointsman_shim_requests",
    "Requests seen on the ext_proc stream, by how they ended on the request path.",
    ["outcome"],  # routed, rejected, passthrough, fail_open, fail_closed, shed, blocked, answered
)
REJECTIONS = Counter(
    "pointsman_shim_rejections",
    "Requests answered with an error by the shim, by reason.",
    ["reason", "status"],
)
BUS_FAILURES = Counter(
    "pointsman_shim_bus_failures",
    "Bus calls that got no usable answer, by service and kind (timeout, no_responders, ...).",
    ["service", "kind"],
)
FAIL_OPEN = Counter(
    "pointsman_shim_fail_open",
    "Requests served under the fail-open policy (Envoy's own load balancing or the requested "
    "model), by cause: the service that did not answer (classifier, picker), or no_endpoints "
    "(the picker had no endpoint to offer).",
    ["service"],
)
DECISION_SECONDS = Histogram(
    "pointsman_shim_decision_seconds",
    "Time from the complete request body to the routing decision (classifier + picker).",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
BUS_SECONDS = Histogram(
    "pointsman_shim_bus_seconds",
    "Latency of one bus request-reply, by service.",
    ["service"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
PICKS = Counter(
    "pointsman_shim_picks",
    "Requests routed, by model and primary endpoint.",
    ["model", "endpoint"],
)
COMPLETIONS = Counter(
    "pointsman_shim_completions",
    "Routed responses that ended, by model and status class.",
    ["model", "status_class", "stream"],
)
TOKENS = Counter(
    "pointsman_shim_tokens",
    "Tokens reported in responses' usage, by model and kind (prompt, completion).",
    ["model", "kind"],
)
USAGE_MISSING = Counter(
    "pointsman_shim_usage_missing",
    "Successful responses that reported no usage.",
    ["model", "stream"],
)
STREAMS = Gauge("pointsman_shim_active_streams", "ext_proc streams open now.")
STREAMS_RESET = Counter(
    "pointsman_shim_streams_reset",
    "ext_proc streams Envoy reset while the shim still expected messages on them (the request "
    "ended early, or Envoy closed the stream after an immediate answer), by stream kind. The "
    "shim closes every other stream itself; each reset keeps a few hundred bytes of native "
    "memory in grpcio's asyncio server (grpc/grpc#43360).",
    ["stream"],  # decision, observer
)
OBSERVED = Counter(
    "pointsman_shim_observer_streams",
    "Observer (observability_mode) streams, by whether they carried a decision of the shim.",
    ["routed"],  # true: a routed request's response path; false: a non-LLM path or an answer
)
REFUSED_PICKS = Counter(
    "pointsman_shim_refused_picks",
    "Pick replies naming an endpoint outside the model's known pool, refused (then handled by "
    "the failure mode), by reason.",
    ["reason"],  # not_in_pool, unknown_pool
)
TRANSLATIONS = Counter(
    "pointsman_shim_translations",
    "Answers translated from chat completions into the client's API, by API and outcome.",
    ["api", "outcome"],  # api: responses, messages; outcome: ok, failed (ended with an error)
)
STORE = Counter(
    "pointsman_shim_responses_store",
    "Calls to the Responses API's store (Redis), by operation and outcome.",
    # op: get, delete, previous, turn, response; outcome: ok, pending (found after waiting for
    # its write: shim.responses.pending_wait_ms), not_found, unavailable
    ["op", "outcome"],
)
SESSIONS = Counter(
    "pointsman_shim_sessions",
    "Routed requests by where their session identity came from.",
    ["source"],  # header, previous_response, conversation, none
)
REWRITES = Counter(
    "pointsman_shim_rewrites",
    "Requests an InferenceModelRewrite sent to another model, by rewrite, asked and target model.",
    ["rewrite", "model", "target"],
)
INTERNAL_ERRORS = Counter(
    "pointsman_shim_internal_errors",
    "Unexpected exceptions in the shim, by the ext_proc message being handled (request_headers, "
    "request_body, response_headers, response_body, ...); each answered with a JSON 500, never "
    "passed to Envoy (whose failure_mode_allow would forward the request unchecked).",
    ["phase"],
)
BUS_TOO_LARGE = Counter(
    "pointsman_shim_bus_too_large",
    "Requests answered 413 because their bus message would exceed the NATS server's max_payload, "
    "by service.",
    ["service"],
)
