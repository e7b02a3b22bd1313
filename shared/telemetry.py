"""OpenTelemetry: traces, metrics, and W3C trace context in NATS headers.

Handlers never touch OpenTelemetry: :mod:`shared.bus` and :mod:`shared.consumer` open a
``<subject> publish`` span around every publish and request and a ``<subject> process`` span
around every handler, and carry ``traceparent``/``tracestate`` in the NATS headers (W3C Trace
Context). FastAPI server spans and httpx client spans come from the OpenTelemetry
instrumentation packages.

Exporters (none by default):

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` set: spans go to that OTLP/HTTP collector;
- ``OTEL_SPANS_FILE`` set: spans are appended as JSON lines to ``<file>.<service>.<pid>``
  (tests read the span tree of a transfer from them).

Metrics are kept by an OpenTelemetry meter provider and served in the Prometheus text format
at ``/metrics`` of each service.
"""

from __future__ import annotations

import contextvars
import json
import os
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import context, metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

_configured = False

# the correlation id of the message or request being handled, for the logs
correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON line: name, kind, trace/span/parent ids, service, times, attributes."""

    def __init__(self, path: str, service: str) -> None:
        self.path, self.service = path, service
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for s in spans:
            ctx = s.get_span_context()
            lines.append(json.dumps({
                "name": s.name, "kind": s.kind.name if s.kind else None, "service": self.service,
                "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
                "start": s.start_time, "end": s.end_time, "status": s.status.status_code.name,
                "attributes": {k: v if isinstance(v, (str, int, float, bool)) else str(v) for k, v in (s.attributes or {}).items()},
            }))
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS


def setup(service: str) -> None:
    """Install the tracer and meter providers for ``service`` (once per process) and instrument httpx."""
    global _configured
    if _configured:
        return
    resource = Resource.create({"service.name": service})
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    spans_file = os.environ.get("OTEL_SPANS_FILE")
    if spans_file:
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(f"{spans_file}.{service}.{os.getpid()}", service)))
    trace.set_tracer_provider(provider)

    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[PrometheusMetricReader()]))

    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor().instrument(request_hook=_redact_client_span, async_request_hook=_redact_client_span_async)
    _configured = True


def instrument_app(app: Any) -> None:
    """Server spans for a FastAPI app (health and metrics routes left out)."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics", server_request_hook=_redact_server_span)


_URL_ATTRIBUTES = ("http.url", "url.full", "http.target", "url.query")


def _redact_attributes(span: Any) -> None:
    """Mask OAuth codes, states and tokens in the URL attributes of a span (shared.redact)."""
    from .redact import redact_url

    attributes = getattr(span, "attributes", None) or {}
    if not span.is_recording():
        return
    for key in _URL_ATTRIBUTES:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            span.set_attribute(key, redact_url(value) if key != "url.query" else redact_url("?" + value)[1:])


def _redact_server_span(span: Any, _scope: Any) -> None:
    _redact_attributes(span)


def _redact_client_span(span: Any, _request: Any) -> None:
    _redact_attributes(span)


async def _redact_client_span_async(span: Any, _request: Any) -> None:
    _redact_attributes(span)


def tracer() -> trace.Tracer:
    return trace.get_tracer("portability-broker")


def meter() -> metrics.Meter:
    return metrics.get_meter("portability-broker")


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers with the current trace context added (``traceparent``)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, Any] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))


def current_ids() -> tuple[str | None, str | None]:
    """(trace id, span id) of the current span, hex, or (None, None)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
