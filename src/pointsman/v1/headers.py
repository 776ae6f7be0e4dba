"""The headers that report a routing decision to the client.

The shim puts each of these on the routed request (so the model server and its logs see them);
the gateway copies them onto the response. Envoy does that copy itself (``response_headers_to_add``
with ``%REQ(name)%``, rendered from :data:`REPORTED`), so reporting never costs an ext_proc round
trip on the response. A header missing from this list is not reported by such a gateway, and a
test keeps the list in step with the shim's and the classifier's names.
"""

from __future__ import annotations

#: Set by the shim on every routed request.
SELECTED_MODEL = "x-selected-model"
ROUTE = "x-pointsman-route"
#: ``fail-open`` when the classifier did not answer in time.
ROUTE_CLASSIFIER = "x-pointsman-classifier"
#: P/D disaggregation: the prefill pod, for llm-d's routing sidecar.
PREFILLER = "x-prefiller-host-port"
#: The picker's scores, with the debug request header only.
SCORES = "x-pointsman-scores"
#: The endpoint that served the response: Envoy's upstream address, not a request header.
ENDPOINT = "x-pointsman-endpoint"
#: Where the request's session identity came from: ``header`` (``x-session-id``),
#: ``previous_response`` (the session of the response it continues) or ``conversation`` (a hash
#: of the conversation's opening turns).
SESSION = "x-pointsman-session"
#: The target an InferenceModelRewrite sent the request to (a canary, one side of a split).
REWRITE = "x-pointsman-rewrite"
#: ``model: auto`` served by another candidate than the classifier's first:
#: ``second; reason=saturated`` (only with ``debug.report_model_choice``).
MODEL_CHOICE = "x-pointsman-model-choice"

#: Set by the classifier (see services/classifier/README.md, "Headers").
CLASSIFIER = (
    "x-pointsman-model",
    "x-pointsman-selected",
    "x-pointsman-category",
    "x-pointsman-confidence",
    "x-pointsman-reasoning",
    "x-pointsman-system-prompt",
    "x-pointsman-jailbreak",
    "x-pointsman-pii",
    "x-pointsman-fallback",
    "x-pointsman-session-model",
    "x-pointsman-cache",
    "x-pointsman-cache-similarity",
    "x-pointsman-debug-categories",
    "x-pointsman-debug-candidates",
    "x-pointsman-debug-jailbreak",
)

#: Request headers the gateway copies onto the response, in this order.
REPORTED = (
    SELECTED_MODEL,
    ROUTE,
    ROUTE_CLASSIFIER,
    PREFILLER,
    SCORES,
    SESSION,
    REWRITE,
    MODEL_CHOICE,
    *CLASSIFIER,
)
