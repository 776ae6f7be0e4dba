"""Generate docs/metrics.md: every Prometheus metric of every service, from the code itself.

    python docs/metrics_table.py          # rewrite docs/metrics.md
    python docs/metrics_table.py --check  # exit 1 if docs/metrics.md is out of date (CI test)

Each service defines its metrics in one module; this script instantiates them on fresh registries
and reads name, type, labels and help text, so the table cannot drift from the code.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

OUT = Path(__file__).with_name("metrics.md")

#: service -> (module, factory attribute or None for module-level metrics on the global registry)
SOURCES: list[tuple[str, str, str | None]] = [
    ("extproc-shim", "pointsman_shim.metrics", None),
    ("picker", "pointsman_picker.telemetry", "Telemetry"),
    ("metrics-collector", "pointsman_collector.telemetry", "Telemetry"),
    ("classifier", "pointsman_classifier.metrics", "Metrics"),
]


def _collectors(module_name: str, factory: str | None) -> list[Any]:
    module = importlib.import_module(module_name)
    if factory is None:
        return [c for c in _all(REGISTRY) if c._name.startswith(_prefix_of(module_name))]
    instance = getattr(module, factory)()
    registry = getattr(instance, "registry", None)
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(f"{module_name}.{factory}() has no .registry")
    return list(_all(registry))


def _prefix_of(module_name: str) -> str:
    return "pointsman_" + module_name.split(".")[0].removeprefix("pointsman_")


def _all(registry: CollectorRegistry) -> list[Any]:
    return [c for c in registry._collector_to_names if hasattr(c, "_name")]


def rows() -> list[tuple[str, str, str, str, str]]:
    out = []
    for service, module, factory in SOURCES:
        for c in sorted(_collectors(module, factory), key=lambda c: c._name):
            kind = c._type
            name = c._name
            if kind == "counter" and not name.endswith("_total"):
                name += "_total"
            labels = ", ".join(f"`{label}`" for label in c._labelnames) or "-"
            out.append((service, f"`{name}`", kind, labels, " ".join(c._documentation.split())))
    return out


def render() -> str:
    lines = [
        "# Metrics",
        "",
        "Every Prometheus metric that Pointsman's services export, generated from the code by",
        "`python docs/metrics_table.py` (a test fails when this file is out of date). Each service",
        "serves them on `/metrics` of its HTTP port (shim 9102, picker 9103, collector 9104,",
        "classifier 9105). Histograms also export `_bucket`, `_sum` and `_count` series.",
        "",
        "| service | name | type | labels | meaning |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {n} | {t} | {lab} | {doc} |" for s, n, t, lab, doc in rows()]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python docs/metrics_table.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({text.count(chr(10)) - 9} metrics)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
