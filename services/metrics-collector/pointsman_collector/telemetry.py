"""The collector's own Prometheus metrics (served by the shared ops server, ``pointsman.runtime``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Telemetry:
    def __init__(self) -> None:
        self._results: dict[str, Any] = {}
        self.registry = CollectorRegistry()
        r = self.registry
        self.scrapes = Counter(
            "pointsman_collector_scrapes_total",
            "Scrape attempts by result (ok, error, timeout, parse_error).",
            ["result"],
            registry=r,
        )
        self.skipped = Counter(
            "pointsman_collector_scrapes_skipped_total",
            "Scrapes not started because the endpoint's previous scrape was still in flight.",
            registry=r,
        )
        self.scrape_seconds = Histogram(
            "pointsman_collector_scrape_seconds",
            "Duration of one scrape (fetch and parse).",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=r,
        )
        self.marked_unhealthy = Counter(
            "pointsman_collector_marked_unhealthy_total",
            "Healthy endpoints marked unhealthy (taken out of routing until a scrape succeeds), "
            "by reason: failures (unhealthy_after failed scrapes in a row), connect (a refused "
            "or failed connection, at once).",
            ["reason"],
            registry=r,
        )
        self.publishes = Counter(
            "pointsman_collector_publishes_total",
            "Pool snapshots published.",
            registry=r,
        )
        self.endpoints = Gauge(
            "pointsman_collector_endpoints",
            "Endpoints discovered (all replicas) and owned (scraped by this replica).",
            ["state"],
            registry=r,
        )
        self.members = Gauge(
            "pointsman_collector_members",
            "Live collector replicas this replica sees (itself included).",
            registry=r,
        )
        self.disagreeing = Gauge(
            "pointsman_collector_members_disagreeing",
            "Replicas whose discovered endpoints have differed from this one's for over 10 s.",
            registry=r,
        )
        self.tick_lag = Histogram(
            "pointsman_collector_tick_lag_seconds",
            "How late a scrape tick started (the process cannot keep up when this grows).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
            registry=r,
        )

    def result(self, result: str) -> Any:
        """The scrape counter's child for one result (cached: looked up on every scrape)."""
        child = self._results.get(result)
        if child is None:
            child = self._results[result] = self.scrapes.labels(result)
        return child
