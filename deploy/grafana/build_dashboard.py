"""Build deploy/grafana/dashboards/pointsman.json, Pointsman's Grafana dashboard.

The dashboard is code so its PromQL stays reviewable and its metric names checkable:
tests/deploy/test_observability.py checks that the JSON equals this build and that every
``pointsman_*`` metric it queries is defined in a service. Re-run after editing:

    python deploy/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "pointsman.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"

_next_id = 0


def _id() -> int:
    global _next_id
    _next_id += 1
    return _next_id


def target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def timeseries(
    title: str,
    description: str,
    targets: list[tuple[str, str]],
    grid: tuple[int, int, int, int],
    unit: str = "short",
    right_axis: list[str] | None = None,
    stack: bool = False,
) -> dict[str, Any]:
    """A time-series panel; ``right_axis`` lists refIds drawn against a second y axis."""
    x, y, w, h = grid
    overrides = [
        {
            "matcher": {"id": "byFrameRefID", "options": ref},
            "properties": [
                {"id": "custom.axisPlacement", "value": "right"},
                {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                {"id": "unit", "value": "short"},
            ],
        }
        for ref in right_axis or []
    ]
    return {
        "id": _id(),
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10 if stack else 0,
                    "showPoints": "never",
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": overrides,
        },
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": [
            target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(targets)
        ],
    }


def stat(
    title: str, description: str, expr: str, grid: tuple[int, int, int, int], unit: str
) -> dict[str, Any]:
    x, y, w, h = grid
    return {
        "id": _id(),
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "decimals": 2}, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
        },
        "targets": [target(expr, "", "A")],
    }


def row(title: str, y: int) -> dict[str, Any]:
    return {
        "id": _id(),
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


def r(selector: str) -> str:
    """``rate(selector[$__rate_interval])``: short enough to keep the PromQL lines readable."""
    return f"rate({selector}[{RATE}])"


SHED = 'pointsman_shim_requests_total{outcome="shed"}'
ANSWERED = 'pointsman_shim_requests_total{outcome="answered"}'
OVERLOADED = 'pointsman_classifier_errors_total{error="overloaded"}'


def p99(histogram: str) -> str:
    return f"histogram_quantile(0.99, sum by (le) ({r(histogram + '_bucket')}))"


def quantiles(metric: str, by: str, label: str) -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, one series per value of ``by``."""
    out = []
    for q in ("0.5", "0.99"):
        keys = f"le, {by}" if by else "le"
        expr = f"histogram_quantile({q}, sum by ({keys}) ({r(metric + '_bucket')}))"
        legend = f"{label} p{int(float(q) * 100)}" + (f" {{{{{by}}}}}" if by else "")
        out.append((expr, legend))
    return out


def panels() -> list[dict[str, Any]]:
    shim_total = f"sum({r('pointsman_shim_requests_total')})"
    p: list[dict[str, Any]] = []

    p.append(row("Overview", 0))
    p.append(stat("Requests/s", "Requests seen by the shims.", shim_total, (0, 1, 4, 4), "reqps"))
    p.append(
        stat(
            "Error ratio",
            "Share of requests answered with an error by the shim (bad input, fail-closed).",
            f"sum({r('pointsman_shim_rejections_total')}) / clamp_min({shim_total}, 1e-9)",
            (4, 1, 4, 4),
            "percentunit",
        )
    )
    p.append(
        stat(
            "Shed ratio",
            "Share of requests shed under saturation (picker 429s).",
            f"sum({r(SHED)}) / clamp_min({shim_total}, 1e-9)",
            (8, 1, 4, 4),
            "percentunit",
        )
    )
    p.append(
        stat(
            "Fail-open ratio",
            "Share of requests served under the fail-open policy because a service did not answer.",
            f"sum({r('pointsman_shim_fail_open_total')}) / clamp_min({shim_total}, 1e-9)",
            (12, 1, 4, 4),
            "percentunit",
        )
    )
    p.append(
        stat(
            "Decision p99",
            "Shim: from the complete request body to the routing decision (classifier + picker).",
            p99("pointsman_shim_decision_seconds"),
            (16, 1, 4, 4),
            "s",
        )
    )
    p.append(
        stat(
            "Endpoints",
            "Model-server endpoints the collectors discovered.",
            'max(pointsman_collector_endpoints{state="discovered"})',
            (20, 1, 4, 4),
            "short",
        )
    )

    p.append(row("Requests and errors", 5))
    p.append(
        timeseries(
            "Requests by outcome",
            "How each request ended on the request path (routed, rejected, fail_open, shed, ...).",
            [(f"sum by (outcome) ({r('pointsman_shim_requests_total')})", "{{outcome}}")],
            (0, 6, 12, 8),
            "reqps",
            stack=True,
        )
    )
    p.append(
        timeseries(
            "Errors by reason",
            "Requests the shim answered with an error, and bus calls that got no usable answer.",
            [
                (
                    f"sum by (reason, status) ({r('pointsman_shim_rejections_total')})",
                    "{{status}} {{reason}}",
                ),
                (
                    f"sum by (service, kind) ({r('pointsman_shim_bus_failures_total')})",
                    "bus {{service}} {{kind}}",
                ),
                (
                    f"sum by (error) ({r('pointsman_classifier_errors_total')})",
                    "classifier {{error}}",
                ),
            ],
            (12, 6, 12, 8),
            "reqps",
        )
    )
    p.append(
        timeseries(
            "Responses by status class",
            "Routed responses that ended, by model and HTTP status class.",
            [
                (
                    f"sum by (model, status_class) ({r('pointsman_shim_completions_total')})",
                    "{{model}} {{status_class}}",
                )
            ],
            (0, 14, 12, 7),
            "reqps",
        )
    )
    p.append(
        timeseries(
            "Tokens/s by model",
            "Tokens reported in the responses' usage.",
            [
                (
                    f"sum by (model, kind) ({r('pointsman_shim_tokens_total')})",
                    "{{model}} {{kind}}",
                )
            ],
            (12, 14, 12, 7),
            "short",
        )
    )

    p.append(row("Decision latency", 21))
    p.append(
        timeseries(
            "Decision latency p50/p99 by service",
            "Shim: body to decision. Picker: pick request to reply. Classifier: classify request "
            "to reply (queue wait included). Collector: one scrape.",
            quantiles("pointsman_shim_decision_seconds", "", "shim")
            + quantiles("pointsman_picker_decision_seconds", "", "picker")
            + quantiles("pointsman_classifier_request_seconds", "", "classifier")
            + quantiles("pointsman_collector_scrape_seconds", "", "collector scrape"),
            (0, 22, 12, 8),
            "s",
        )
    )
    p.append(
        timeseries(
            "Bus round trip p50/p99 (shim side)",
            "One NATS request-reply as the shim sees it, by service asked.",
            quantiles("pointsman_shim_bus_seconds", "service", "bus"),
            (12, 22, 12, 8),
            "s",
        )
    )

    p.append(row("Endpoints", 30))
    p.append(
        timeseries(
            "Picks per endpoint vs queue depth",
            "Solid: requests the pickers sent to each endpoint. Dashed (right axis): the "
            "endpoint's waiting queue as vLLM reports it. A long queue should get fewer picks.",
            [
                (
                    f"sum by (endpoint) ({r('pointsman_picker_picks_total')})",
                    "picks {{endpoint}}",
                ),
                ("sum by (instance) (vllm:num_requests_waiting)", "waiting {{instance}}"),
            ],
            (0, 31, 12, 9),
            "reqps",
            right_axis=["B"],
        )
    )
    p.append(
        timeseries(
            "KV-cache use and running requests",
            "Per endpoint, from the model servers' /metrics.",
            [
                ("max by (instance) (vllm:kv_cache_usage_perc)", "kv {{instance}}"),
                ("sum by (instance) (vllm:num_requests_running)", "running {{instance}}"),
            ],
            (12, 31, 12, 9),
            "percentunit",
            right_axis=["B"],
        )
    )
    p.append(
        timeseries(
            "Picker decisions and in-flight",
            "Pick outcomes by pool, and assignments not yet completed.",
            [
                (
                    f"sum by (pool, status) ({r('pointsman_picker_decisions_total')})",
                    "{{pool}} {{status}}",
                ),
                ("sum(pointsman_picker_in_flight)", "in flight"),
            ],
            (0, 40, 12, 8),
            "reqps",
            right_axis=["B"],
        )
    )
    p.append(
        timeseries(
            "Collector scrapes",
            "Scrape results, and endpoints discovered vs owned by the collector replicas.",
            [
                (f"sum by (result) ({r('pointsman_collector_scrapes_total')})", "{{result}}"),
                ("sum by (state) (pointsman_collector_endpoints)", "endpoints {{state}}"),
            ],
            (12, 40, 12, 8),
            "short",
            right_axis=["B"],
        )
    )

    p.append(row("Classifier", 48))
    p.append(
        timeseries(
            "Classifier batch size",
            "Prompts per forward pass: p50, p99 and mean.",
            [
                *quantiles("pointsman_classifier_batch_size", "", "batch"),
                (
                    f"sum({r('pointsman_classifier_batch_size_sum')}) / "
                    f"clamp_min(sum({r('pointsman_classifier_batch_size_count')}), 1e-9)",
                    "mean",
                ),
            ],
            (0, 49, 8, 8),
            "short",
        )
    )
    p.append(
        timeseries(
            "Classifier queue",
            "Prompts waiting for a batch (sum over replicas; the KEDA trigger), and the p99 wait.",
            [
                ("sum(pointsman_classifier_queue_depth)", "queued"),
                (
                    p99("pointsman_classifier_queue_wait_seconds"),
                    "wait p99 (s)",
                ),
            ],
            (8, 49, 8, 8),
            "short",
            right_axis=["B"],
        )
    )
    p.append(
        timeseries(
            "Model choices and blocks",
            "Routed requests by category and chosen model; blocked prompts by reason.",
            [
                (
                    f"sum by (category, model) ({r('pointsman_classifier_decisions_total')})",
                    "{{category}} -> {{model}}",
                ),
                (
                    f"sum by (reason) ({r('pointsman_classifier_blocks_total')})",
                    "blocked {{reason}}",
                ),
            ],
            (16, 49, 8, 8),
            "reqps",
        )
    )

    p.append(row("Cache and shedding", 57))
    p.append(
        timeseries(
            "Cache hit rate",
            "Prefix-cache hit rate per model server (vLLM's own counters), and the share of "
            "requests Pointsman answered itself (outcome=answered: semantic-cache hits).",
            [
                (
                    f"sum by (instance) ({r('vllm:prefix_cache_hits_total')}) / "
                    f"clamp_min(sum by (instance) ({r('vllm:prefix_cache_queries_total')}), 1e-9)",
                    "prefix {{instance}}",
                ),
                (
                    f"sum({r(ANSWERED)}) / clamp_min({shim_total}, 1e-9)",
                    "answered by Pointsman",
                ),
            ],
            (0, 58, 12, 8),
            "percentunit",
        )
    )
    p.append(
        timeseries(
            "Shed rate",
            "Requests shed under saturation: by the picker (pool, reason, objective) and by an "
            "overloaded classifier.",
            [
                (
                    f"sum by (pool, reason) ({r('pointsman_picker_shed_total')})",
                    "picker {{pool}} {{reason}}",
                ),
                (
                    f"sum({r(OVERLOADED)})",
                    "classifier overloaded",
                ),
            ],
            (12, 58, 12, 8),
            "reqps",
        )
    )
    return p


def dashboard() -> dict[str, Any]:
    global _next_id
    _next_id = 0
    return {
        "uid": "pointsman",
        "title": "Pointsman",
        "description": "Requests, decisions, endpoints, classifier and shedding of a Pointsman "
        "deployment (deploy/grafana/build_dashboard.py).",
        "tags": ["pointsman", "llm", "routing"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-30m", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {"text": "Prometheus", "value": "prometheus"},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "links": [],
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        return 0 if OUTPUT.exists() and OUTPUT.read_text(encoding="utf-8") == text else 1
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
