"""OpenTelemetry tracing shared by every Pointsman process.

One trace follows a request gateway -> shim -> classifier -> picker: the shim continues the trace
from Envoy's ``traceparent``, and W3C trace context rides in NATS message headers to the services
it asks. Spans carry decisions (model, category, endpoint, a scores summary), never prompt text.

Off by default, and then nothing is set up: the OpenTelemetry API's no-op tracer costs a few
hundred nanoseconds per span and no headers are added to bus messages.

Config, the top-level ``tracing:`` section of the one config file:

==================  ==============  ==========================================================
key                 default         meaning
==================  ==============  ==========================================================
``enabled``         ``false``       export spans at all
``exporter``        ``otlp``        ``otlp`` (OTLP over HTTP), ``console`` (stderr), or
                                    ``file`` (one JSON object per span per line, for tests)
``endpoint``        none            OTLP endpoint, e.g. ``http://otel-collector:4318/v1/traces``
                                    (none: ``$OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or the
                                    exporter's default)
``file``            none            path for the ``file`` exporter
``sample_ratio``    ``1.0``         fraction of new traces sampled (a parent's decision wins)
==================  ==============  ==========================================================
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Literal

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TracingConfig",
    "current_trace_id",
    "enabled",
    "extract",
    "inject",
    "setup",
    "tracer",
]

_PROPAGATOR: TextMapPropagator = TraceContextTextMapPropagator()
_enabled = False


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    exporter: Literal["otlp", "console", "file"] = "otlp"
    endpoint: str | None = None
    file: Path | None = None
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)


def setup(config: TracingConfig, service_name: str) -> None:
    """Install a tracer provider for this process when tracing is enabled; else do nothing."""
    global _enabled
    if not config.enabled:
        return
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.namespace": "pointsman"}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    if config.exporter == "file":
        if config.file is None:
            raise ValueError("tracing.file is required with tracing.exporter: file")
        provider.add_span_processor(SimpleSpanProcessor(_JsonLinesExporter(config.file)))
    else:
        exporter: SpanExporter
        if config.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = (
                OTLPSpanExporter(endpoint=config.endpoint)
                if config.endpoint
                else OTLPSpanExporter()
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True


def enabled() -> bool:
    return _enabled


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context (``traceparent``) to outgoing message headers."""
    if _enabled:
        _PROPAGATOR.inject(headers)


def extract(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    """The trace context carried by incoming headers (``None`` when off or absent)."""
    if not _enabled or not headers:
        return None
    return _PROPAGATOR.extract(headers)


def current_trace_id() -> str | None:
    span = trace.get_current_span()
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


class _JsonLinesExporter(SpanExporter):
    """Writes each finished span as one JSON line: tests read spans of several processes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            assert ctx is not None
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "service": span.resource.attributes.get("service.name"),
                        "name": span.name,
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "kind": str(span.kind),
                        "start": span.start_time,
                        "end": span.end_time,
                        "attributes": dict(span.attributes or {}),
                    },
                    default=str,
                )
            )
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None
