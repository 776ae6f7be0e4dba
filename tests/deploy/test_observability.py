"""The Grafana dashboard and the Prometheus scrape configs, aligned with the services' metrics.

A dashboard that queries a metric no service exports shows an empty panel and nobody notices:
every ``pointsman_*`` series the dashboard (or the KEDA trigger) asks for must be defined in a
service's code.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import (
    ROOT,
    custom_resource_errors,
    defined_metrics,
    pointsman_series,
    render,
)

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "pointsman.json"


def _builder() -> Any:
    path = ROOT / "deploy" / "grafana" / "build_dashboard.py"
    spec = importlib.util.spec_from_file_location("build_dashboard", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p["targets"]]


def test_dashboard_json_is_the_builders_output() -> None:
    assert DASHBOARD.read_text(encoding="utf-8") == _builder().render(), (
        "deploy/grafana/dashboards/pointsman.json is stale: run "
        "python deploy/grafana/build_dashboard.py"
    )


def test_dashboard_queries_only_metrics_the_services_define(dashboard: dict[str, Any]) -> None:
    defined = defined_metrics()
    missing = {
        series: expr
        for expr in _exprs(dashboard)
        for series in pointsman_series(expr)
        if series not in defined
    }
    assert not missing, "no service defines: " + ", ".join(sorted(missing))


def test_dashboard_covers_what_operators_need(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(_exprs(dashboard))
    titles = " ".join(p["title"].lower() for p in _panels(dashboard))
    for needed in (
        "pointsman_shim_requests_total",  # requests by outcome
        "pointsman_shim_rejections_total",  # errors by reason
        "pointsman_shim_decision_seconds_bucket",
        "pointsman_picker_decision_seconds_bucket",
        "pointsman_classifier_request_seconds_bucket",
        "pointsman_picker_picks_total",
        "vllm:num_requests_waiting",  # picks per endpoint against queue depth
        "pointsman_classifier_batch_size_bucket",
        "pointsman_classifier_queue_depth",
        "vllm:prefix_cache_hits_total",
        "pointsman_picker_shed_total",
    ):
        assert needed in exprs, needed
    for words in ("errors", "latency", "picks per endpoint", "batch", "queue", "cache", "shed"):
        assert words in titles, words
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "pointsman"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))
            for override in panel["fieldConfig"]["overrides"]:
                assert override["matcher"]["options"] in refs


def test_compose_datasource_is_the_dashboards_default() -> None:
    path = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    ds = yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"][0]
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    current = dashboard["templating"]["list"][0]["current"]
    assert ds["uid"] == current["value"] and ds["name"] == current["text"]


def test_podmonitors_validate_and_select_pointsman_pods() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/prometheus/podmonitors.yaml").read_text()))
    pods = [
        w["spec"]["template"] for w in render("base") if w["kind"] in {"Deployment", "StatefulSet"}
    ]
    components: set[str] = set()
    for monitor in docs:
        errors = custom_resource_errors(monitor)
        assert not errors, errors
        selector = monitor["spec"]["selector"]
        for pod in pods:
            labels = pod["metadata"]["labels"]
            ok = all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
            for expr in selector.get("matchExpressions", []):
                assert expr["operator"] == "In"
                ok = ok and labels.get(expr["key"]) in expr["values"]
            if not ok:
                continue
            components.add(labels["app.kubernetes.io/component"])
            ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in ports, (monitor["metadata"]["name"], endpoint["port"])
    assert components == {"shim", "picker", "collector", "classifier", "model-server"}


def test_plain_prometheus_config_keeps_the_same_pods() -> None:
    path = ROOT / "deploy" / "prometheus" / "prometheus-kubernetes.yml"
    jobs = {j["job_name"]: j for j in yaml.safe_load(path.read_text())["scrape_configs"]}
    keep = {
        j: next(r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep")
        for j, job in jobs.items()
    }
    assert set(keep["pointsman"].split("|")) == {"shim", "picker", "collector", "classifier"}
    assert keep["vllm"] == "model-server"


@pytest.mark.parametrize("path", sorted(Path(ROOT / "deploy" / "grafana").rglob("*.yaml")))
def test_grafana_provisioning_parses(path: Path) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["apiVersion"] == 1
