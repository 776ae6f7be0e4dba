"""bench.overhead.versus meets an older baseline like for like: this tree's shim-cluster limits,
and an open bus beside the authenticated one when the baseline predates bus authentication."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from bench.overhead.__main__ import bench_stack
from bench.overhead.hot_path import ROOT
from bench.overhead.versus import TEMPLATE, has_bus_auth, shim_limits, with_shim_limits


def shim_cluster(template: str) -> dict[str, object]:
    # The template's ${VARS} are not YAML values everywhere; the clusters part parses as text.
    clusters = yaml.safe_load(template[template.index("  clusters:") :].replace("${", "{"))
    return next(c for c in clusters["clusters"] if c["name"] == "pointsman_shim")


def test_a_template_without_limits_gets_this_trees_and_one_with_them_is_kept() -> None:
    ours = (ROOT / TEMPLATE).read_text()
    limits = shim_limits(ours)
    assert "max_requests: 100000" in limits
    old = ours.replace(limits, "")
    assert shim_limits(old) == "" and "circuit_breakers" not in str(shim_cluster(old))
    patched = with_shim_limits(old, limits)
    thresholds = shim_cluster(patched)["circuit_breakers"]["thresholds"]  # type: ignore[index]
    assert thresholds[0]["max_requests"] == 100_000
    assert with_shim_limits(ours, limits) == ours  # its own limits stay
    assert with_shim_limits("static_resources: {}\n", limits) == "static_resources: {}\n"


def test_a_baseline_without_bus_authentication_is_met_on_an_open_bus(tmp_path: Path) -> None:
    assert has_bus_auth(ROOT)  # this tree authenticates its bus
    old = tmp_path / "src/pointsman/stack"
    old.mkdir(parents=True)
    (old / "__init__.py").write_text("class StackOptions:\n    models: list[str]\n")
    assert not has_bus_auth(tmp_path)
    assert not has_bus_auth(tmp_path / "missing")


def test_open_bus_turns_only_the_bus_authentication_off() -> None:
    args = argparse.Namespace(body_mode="BUFFERED", response_path="observer", no_apis=True)
    assert bench_stack(args).options.nats_auth
    args.open_bus = True
    stack = bench_stack(args)
    assert not stack.options.nats_auth
    assert stack.options.models == bench_stack(args, nats_tls=False).options.models
