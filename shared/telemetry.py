"""OpenTelemetry set-up and W3C trace context in NATS headers.

Handlers never touch OpenTelemetry: :mod:`shared.bus` opens a ``<subject> publish`` span
around every publish and request and a ``<subject> process`` span around every handler,
and carries ``traceparent``/``tracestate`` in the NATS headers (W3C Trace Context).
No exporter is configured by default; set ``OTEL_EXPORTER_OTLP_ENDPOINT`` to add one.
"""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

_configured = False


def setup(service: str) -> None:
    """Install an SDK tracer provider for ``service`` (once per process)."""
    global _configured
    if _configured:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        try:  # optional dependency
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[import-not-found]
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        except ImportError:
            pass
    trace.set_tracer_provider(provider)
    _configured = True


def tracer() -> trace.Tracer:
    return trace.get_tracer("portability-broker")


def inject_headers(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers with the current trace context added (``traceparent``)."""
    carrier: dict[str, str] = dict(headers or {})
    propagate.inject(carrier)
    return carrier


def extract_context(headers: dict[str, Any] | None) -> context.Context:
    return propagate.extract(dict(headers or {}))
