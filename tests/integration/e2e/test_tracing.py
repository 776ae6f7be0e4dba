"""One trace per request across real processes: Envoy's traceparent -> shim -> classifier, picker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.e2e.conftest import make_stack

pytestmark = pytest.mark.integration

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SECRET = "zebra-quartz-prompt-marker"


def test_one_trace_spans_shim_classifier_and_picker(tmp_path: Path) -> None:
    spans_file = tmp_path / "spans.jsonl"
    with make_stack(
        models=["alpha", "beta"],
        replicas=1,
        classifier=True,
        overrides={
            "tracing": {"enabled": True, "exporter": "file", "file": str(spans_file)},
            "shim": {"classifier": {"timeout_ms": 5000}, "pick_timeout_ms": 500},
        },
    ) as stack:
        r = httpx.post(
            f"{stack.gateway_url}/v1/chat/completions",
            json={
                "model": "auto",
                "messages": [{"role": "user", "content": f"What is 2+2? {SECRET}"}],
                "max_tokens": 2,
            },
            headers={"traceparent": f"00-{TRACE}-{PARENT}-01"},
            timeout=30,
        )
        assert r.status_code == 200, r.text

        def ours() -> list[dict[str, object]]:
            if not spans_file.exists():
                return []
            spans = [
                json.loads(line) for line in spans_file.read_text().splitlines() if line.strip()
            ]
            return [s for s in spans if s["trace_id"] == TRACE]

        deadline = time.monotonic() + 60
        while {s["service"] for s in ours()} != {
            "pointsman-shim",
            "pointsman-classifier",
            "pointsman-picker",
        }:
            assert time.monotonic() < deadline, ours()
            time.sleep(0.1)
    spans = {s["name"]: s for s in ours()}
    route = spans["pointsman.shim.route"]
    assert route["parent_id"] == PARENT  # continues the caller's trace
    assert spans["pointsman.classify"]["parent_id"] == route["span_id"]
    assert spans["pointsman.pick"]["parent_id"] == route["span_id"]
    assert (
        spans["pointsman.classifier.classify"]["parent_id"]
        == spans["pointsman.classify"]["span_id"]
    )
    assert spans["pointsman.picker.pick"]["parent_id"] == spans["pointsman.pick"]["span_id"]
    # decision attributes, and no prompt text anywhere
    assert spans["pointsman.classifier.classify"]["attributes"]["pointsman.category"]
    assert spans["pointsman.picker.pick"]["attributes"]["pointsman.endpoints"]
    assert route["attributes"]["pointsman.model"] in {"alpha", "beta"}
    assert SECRET not in spans_file.read_text()
