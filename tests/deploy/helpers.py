"""Shared checks of the deploy tests: CRD schemas, the one config file, metric names, rendering."""

from __future__ import annotations

import copy
import functools
import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from pointsman import configfile

ROOT = Path(__file__).resolve().parents[2]
CRDS = Path(__file__).resolve().parent / "crds"
KUBERNETES = ROOT / "deploy" / "kubernetes"

#: config section -> (module, model class) of the service that validates it
SECTIONS = {
    "shim": ("pointsman_shim.config", "ShimConfig"),
    "picker": ("pointsman_picker.config", "PickerConfig"),
    "collector": ("pointsman_collector.config", "CollectorConfig"),
    "classifier": ("pointsman_classifier.config", "ClassifierConfig"),
    # the shared sections every service reads
    "nats": ("pointsman.bus", "NatsConfig"),
    "redis": ("pointsman.redisconf", "RedisSecurity"),
    "debug": ("pointsman.debug", "DebugConfig"),
}


# --- custom resources -----------------------------------------------------------------------


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown fields like the API server's strict field validation (kubectl apply).

    A structural CRD schema prunes or rejects fields it does not declare; JSON Schema allows
    them unless told otherwise, so every object that lists its properties and does not keep
    unknown fields gets ``additionalProperties: false``.
    """
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(out)
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, from the CRDs in tests/deploy/crds."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        spec = crd["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schema = _strict(version["schema"]["openAPIV3Schema"])
            jsonschema.Draft7Validator.check_schema(schema)
            out[(api_version, spec["names"]["kind"])] = schema
    return out


def custom_resource_errors(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one custom resource ([] = valid); KeyError if its CRD is not here."""
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in validator.iter_errors(doc)
    ]


def is_custom(doc: dict[str, Any]) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group not in {
        "",
        "apps",
        "batch",
        "policy",
        "autoscaling",
        "rbac.authorization.k8s.io",
        "networking.k8s.io",
        "apiextensions.k8s.io",
        "discovery.k8s.io",
    }


# --- the one config file --------------------------------------------------------------------


def config_errors(data: dict[str, Any]) -> list[str]:
    """Validate a whole Pointsman config the way the services do at start-up.

    Each section goes through its service's own pydantic model (extra keys forbidden), so a
    deploy config with a key a service does not know fails here, not in a crash-looping pod.
    A service whose package is not importable yet is skipped, not failed.
    """
    errors = []
    known = {"pools", "tracing", "gateway", *SECTIONS}
    unknown = set(data) - known
    if unknown:
        errors.append(f"unknown top-level keys {sorted(unknown)}")
    if not isinstance(data.get("nats", {}), dict):
        errors.append("nats must be a mapping")
    for section, (module_name, class_name) in SECTIONS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        model = getattr(module, class_name)
        try:
            configfile.section(data, section, model)
        except configfile.ConfigError as exc:
            errors.append(str(exc))
    return errors


def load_config(path: Path) -> dict[str, Any]:
    return configfile.read(path)


# --- metric names ---------------------------------------------------------------------------

_METRIC = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\"")


@functools.cache
def defined_metrics() -> dict[str, str]:
    """Every Prometheus series name the services expose -> the Python file that defines it.

    prometheus-client appends ``_total`` to counters (and strips one given), ``_bucket``,
    ``_sum`` and ``_count`` to histograms.
    """
    out: dict[str, str] = {}
    for path in [*ROOT.glob("services/*/pointsman_*/**/*.py"), *ROOT.glob("src/pointsman/**/*.py")]:
        text = path.read_text(encoding="utf-8")
        for kind, name in _METRIC.findall(text):
            rel = str(path.relative_to(ROOT))
            if kind == "Counter":
                base = name.removesuffix("_total")
                names = [f"{base}_total", f"{base}_created"]
            elif kind in {"Histogram", "Summary"}:
                names = [name, f"{name}_bucket", f"{name}_sum", f"{name}_count"]
            else:
                names = [name]
            for series in names:
                out[series] = rel
    return out


_SERIES = re.compile(r"\b(pointsman_[a-z0-9_]+)")


def pointsman_series(expr: str) -> set[str]:
    return set(_SERIES.findall(expr))


# --- kubectl --------------------------------------------------------------------------------


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    return path


@functools.cache
def render(target: str) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/kubernetes/<target>`` as a list of documents."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return [d for d in yaml.safe_load_all(result.stdout) if d]
