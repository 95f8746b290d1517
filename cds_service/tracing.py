"""OpenTelemetry traces, on when OTEL_EXPORTER_OTLP_ENDPOINT is set (OTLP over
HTTP; OTEL_SERVICE_NAME names the service, default "mg-cds").

Each HTTP call is one server span (Flask instrumentation); a hook call's span
carries ``cds.service_id``, ``cds.hook`` and ``cds.card_count``. Each FHIR fetch
of the prefetch (requests instrumentation; the fetch threads carry the context)
is a child span named by resource type ("GET Observation").

Never patient data or tokens: the requests instrumentation records full URLs
(``Observation?patient=123``, ``Patient/123``), so every span leaves through
``RedactingExporter``, which takes query strings out of every text attribute,
event and status, and replaces the id after a FHIR resource type with ``{id}``.
Health, readiness and metrics calls are not traced."""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

from flask import Flask, g, request

ID_AFTER_TYPE = re.compile(r"\b([A-Z][a-z]+[A-Za-z]*)/[A-Za-z0-9\-.]{1,64}")
QUERY = re.compile(r"\?[^\s\"'<>]*")
FHIR_TYPE = re.compile(r"/([A-Z][a-z]+[A-Za-z]*)(?:/[^/?]*)?(?:\?|$)")
UNTRACED = "healthz,readyz,metrics"


def redact(text: str) -> str:
    """``https://ehr/fhir/Observation?patient=123`` -> ``https://ehr/fhir/Observation?{query}``;
    ``Patient/123`` -> ``Patient/{id}``."""
    return ID_AFTER_TYPE.sub(r"\1/{id}", QUERY.sub("?{query}", text))


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_clean(v) for v in value)
    return value


def _clean_attributes(attributes: Any) -> dict[str, Any]:
    return {k: _clean(v) for k, v in (attributes or {}).items()}


def _redacted_span(span: Any) -> Any:
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import Status
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    return ReadableSpan(
        name=redact(span.name), context=span.context, parent=span.parent, resource=span.resource,
        attributes=_clean_attributes(span.attributes),
        events=[Event(e.name, _clean_attributes(e.attributes), e.timestamp) for e in span.events],
        links=span.links, kind=span.kind, status=status, start_time=span.start_time, end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope)


def redacting_exporter(inner: Any) -> Any:
    """A SpanExporter that hands ``inner`` the spans with URLs redacted."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class RedactingExporter(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return inner.export([_redacted_span(s) for s in spans])

        def shutdown(self) -> None:
            inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return inner.force_flush(timeout_millis)

    return RedactingExporter()


def _request_hook(span: Any, prepared: Any) -> None:
    """Name a FHIR fetch by its resource type; its URL is redacted at export."""
    if span.is_recording():
        match = FHIR_TYPE.search(prepared.path_url or "")
        if match:
            span.update_name(f"{prepared.method} {match.group(1)}")


def init_app(app: Flask, exporter: Any = None, *, simple: bool = False) -> Any:
    """Trace ``app`` when OTEL_EXPORTER_OTLP_ENDPOINT is set, or into ``exporter`` (tests).
    Returns the TracerProvider, or None when tracing is off. ``simple`` exports each span
    as it ends (tests); otherwise spans are batched."""
    if exporter is None and not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return None
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.threading import ThreadingInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.trace import get_current_span
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "mg-cds")}))
    processor = SimpleSpanProcessor if simple else BatchSpanProcessor
    provider.add_span_processor(processor(redacting_exporter(exporter)))
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider, excluded_urls=UNTRACED)
    requests_instrumentor = RequestsInstrumentor()
    if requests_instrumentor.is_instrumented_by_opentelemetry:  # one provider per process for requests
        requests_instrumentor.uninstrument()
    requests_instrumentor.instrument(tracer_provider=provider, request_hook=_request_hook)
    if not ThreadingInstrumentor().is_instrumented_by_opentelemetry:
        ThreadingInstrumentor().instrument()

    @app.after_request
    def _hook_attributes(resp: Any) -> Any:
        span = get_current_span()
        service_id = g.get("service_id")
        services = app.extensions["mg_cds"]["services"]
        if span.is_recording() and service_id in services:
            span.set_attribute("cds.service_id", service_id)
            span.set_attribute("cds.hook", services[service_id].hook)
            if request.endpoint == "cds.invoke" and g.get("cards") is not None:
                span.set_attribute("cds.card_count", int(g.get("cards")))
        return resp

    return provider
