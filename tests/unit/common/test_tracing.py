"""Tracing: off costs nothing on the bus; on, context crosses message headers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from pointsman import tracing


def test_off_adds_no_headers_and_extracts_nothing() -> None:
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}
    assert tracing.extract({"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}) is None
    assert not tracing.enabled()


def test_on_propagates_through_headers_and_writes_spans(tmp_path: Path) -> None:
    """In a fresh process (a tracer provider is set once per process)."""
    spans = tmp_path / "spans.jsonl"
    script = textwrap.dedent(
        f"""
        from opentelemetry.trace import SpanKind
        from pointsman import tracing
        tracing.setup(tracing.TracingConfig(enabled=True, exporter="file", file={str(spans)!r}), "svc")
        t = tracing.tracer("test")
        parent = {{"traceparent": "00-{"a" * 32}-{"b" * 16}-01"}}
        with t.start_as_current_span("server", context=tracing.extract(parent), kind=SpanKind.SERVER):
            carrier = {{}}
            tracing.inject(carrier)
            print(carrier["traceparent"])
            print(tracing.current_trace_id())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0].startswith("00-" + "a" * 32 + "-")
    assert out[1] == "a" * 32
    (span,) = [json.loads(line) for line in spans.read_text().splitlines()]
    assert span["trace_id"] == "a" * 32
    assert span["parent_id"] == "b" * 16
    assert span["service"] == "svc"
