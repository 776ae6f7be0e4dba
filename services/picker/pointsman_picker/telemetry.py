"""Prometheus metrics of one picker replica.

Each replica owns a registry (not the process-global one) so tests can run several replicas in
one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pointsman.runtime import Children

_LATENCY_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
    0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip


_RATIO_BUCKETS = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.11, 1.25, 1.5, 2.0, 4.0)
_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class FlowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queued = Gauge(
            "pointsman_picker_flow_queued", "Requests waiting in flow control, this replica.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.enqueued = Counter(
            "pointsman_picker_flow_enqueued", "Requests that had to wait (pool saturated).",
            ["pool", "priority"], registry=r,
        )  # fmt: skip
        self.dispatched = Counter(
            "pointsman_picker_flow_dispatched", "Waiting requests dispatched.", ["pool"],
            registry=r,
        )  # fmt: skip
        self.dropped = Counter(
            "pointsman_picker_flow_dropped",
            "Requests that left flow control unserved, by reason (queue_full, "
            "tenant_queue_full: 429; ttl_expired: 503).",
            ["pool", "reason"], registry=r,
        )  # fmt: skip
        self.wait_seconds = Histogram(
            "pointsman_picker_flow_wait_seconds", "Time waiting in flow control (dispatched).",
            ["pool"], buckets=_WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.sync_errors = Counter(
            "pointsman_picker_flow_sync_errors", "Failed exchanges of the tenant counters.",
            registry=r,
        )  # fmt: skip


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        #: ``child(metric, *labels)``: ``metric.labels(*labels)`` without its per-call cost, for
        #: the children every pick touches.
        self.child = Children()
        r = self.registry
        self.picks = Counter(
            "pointsman_picker_picks", "Requests routed, by chosen endpoint.",
            ["pool", "endpoint"], registry=r,
        )  # fmt: skip
        self.decisions = Counter(
            "pointsman_picker_decisions", "Pick decisions by outcome.",
            ["pool", "status"], registry=r,
        )  # fmt: skip
        self.shed = Counter(
            "pointsman_picker_shed", "Requests shed (429) under saturation.",
            ["pool", "reason", "objective"], registry=r,
        )  # fmt: skip
        self.decision_seconds = Histogram(
            "pointsman_picker_decision_seconds",
            "Time from receiving a pick request to sending the reply.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.pick_seconds = Histogram(
            "pointsman_picker_pick_seconds",
            "CPU path of one decision in the handler: the schedule (no I/O, no waiting).",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.bad_messages = Counter(
            "pointsman_picker_bad_messages", "Bus messages that failed to decode.",
            ["subject"], registry=r,
        )  # fmt: skip
        self.snapshots = Counter(
            "pointsman_picker_snapshots", "Metrics snapshots received.", ["pool"], registry=r
        )
        self.completions = Counter(
            "pointsman_picker_completions", "Completion events that released an assignment.",
            registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "pointsman_picker_in_flight", "Assignments not yet completed (all pools).", registry=r
        )
        self.expired = Counter(
            "pointsman_picker_in_flight_expired",
            "In-flight assignments dropped after their TTL (lost completion events).",
            registry=r,
        )  # fmt: skip
        self.stale_endpoints = Gauge(
            "pointsman_picker_stale_endpoints",
            "Known endpoints whose last scrape is older than picker.stale_after_ms, by pool.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.stale_picks = Counter(
            "pointsman_picker_stale_picks",
            "Picks made with no fresh endpoint in the pool: from the last known healthy "
            "endpoints, scored on prefix, sessions and in-flight only.",
            ["pool"], registry=r,
        )  # fmt: skip
        self.sync_errors = Counter(
            "pointsman_picker_shared_state_errors", "Failed shared-state operations.",
            ["op"], registry=r,
        )  # fmt: skip
        self.flow = FlowMetrics(r)
        self.latency_samples = Counter(
            "pointsman_picker_latency_samples",
            "Completed requests the latency predictor learnt from (this replica's and shared).",
            registry=r,
        )
        self.ttft_prediction_ratio = Histogram(
            "pointsman_picker_latency_ttft_prediction_ratio",
            "Predicted / measured TTFT of completed requests, predicted before learning from "
            "them, measured by the shim less the wait in flow control (1 = exact).",
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_choice = Counter(
            "pointsman_picker_model_choice",
            "Joint model and endpoint decisions (model: auto with candidates), by the rank of "
            "the model chosen (first, second, third, other, none) and the reason.",
            ["choice", "reason"], registry=r,
        )  # fmt: skip
