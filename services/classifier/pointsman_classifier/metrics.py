"""Prometheus metrics of the classifier, on a registry of its own (one per service instance)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pointsman_classifier.batcher import BatchStats

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.batch_size = Histogram(
            "pointsman_classifier_batch_size",
            "Prompts per forward pass.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.inference_seconds = Histogram(
            "pointsman_classifier_inference_seconds",
            "Model time of one batch (tokenize, encoder, heads).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "pointsman_classifier_queue_wait_seconds",
            "Longest wait in the batching queue of any request of a batch.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "pointsman_classifier_request_seconds",
            "From receiving a classify request to sending the reply.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions = Counter(
            "pointsman_classifier_sessions",
            "Follow-up decisions of auto requests in a session: new, kept, switched, "
            "unavailable (Redis did not answer).",
            ["verdict"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "pointsman_classifier_queue_depth",
            "Prompts waiting for a batch.",
            registry=r,
        )
        self.lanes = Gauge(
            "pointsman_classifier_lanes",
            "Engines serving prompts: 1, or 2 once the long lane (batching.long_prompt_chars) is up.",
            registry=r,
        )
        self.spare_engines = Gauge(
            "pointsman_classifier_spare_engines",
            "Engine processes loaded and idle, ready to take over a lane whose engine dies "
            "(engine_spare): 1, or 0 while none is loaded.",
            registry=r,
        )
        self.engine_restarts = Counter(
            "pointsman_classifier_engine_restarts_total",
            "Engine processes replaced after they died (by the spare, or restarted), by lane "
            "(main, long).",
            ["lane"],
            registry=r,
        )
        self.decisions = Counter(
            "pointsman_classifier_decisions_total",
            "Routed requests by category and chosen model.",
            ["category", "model", "selected"],
            registry=r,
        )
        self.blocks = Counter(
            "pointsman_classifier_blocks_total",
            "Blocked requests by reason.",
            ["reason"],
            registry=r,
        )
        self.safety_turns = Counter(
            "pointsman_classifier_safety_turns_total",
            "Turns other than the classified text that the safety check read "
            "(jailbreak.read_roles), by result: scored (classified now), cached (scored before).",
            ["result"],
            registry=r,
        )
        for result in ("scored", "cached"):
            self.safety_turns.labels(result)  # both series from the start, at 0
        self.pii = Counter(
            "pointsman_classifier_pii_found_total",
            "Requests with PII, by entity type.",
            ["type"],
            registry=r,
        )
        self.errors = Counter(
            "pointsman_classifier_errors_total",
            "Requests answered without a decision (overloaded = shed, bad_request, internal).",
            ["error"],
            registry=r,
        )

        self.shed = Counter(
            "pointsman_classifier_shed_total",
            "Requests answered overloaded at once, by reason: queue_full (batching.queue_size "
            "waiting), deadline (could not finish within the caller's budget_ms, or its budget "
            "passed while queued).",
            ["reason"],
            registry=r,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(lambda: float(depth()))

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.inference_seconds.observe(stats.run_s)
        self.queue_wait_seconds.observe(stats.queue_wait_s)
