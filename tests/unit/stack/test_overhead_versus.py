"""bench.overhead.versus gives an older baseline the shim cluster's limits of this tree."""

from __future__ import annotations

import yaml

from bench.overhead.hot_path import ROOT
from bench.overhead.versus import TEMPLATE, shim_limits, with_shim_limits


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
