"""OpenTelemetry traces into the SDK's in-memory exporter: one server span per
hook call with service id, hook and card count; each FHIR fetch of the prefetch
a child span; no span attribute, event or name holds the patient id, a query
string or the access token."""
from __future__ import annotations

import json
import re

import pytest
import responses
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cds_service import create_app, tracing

from .conftest import SCENARIOS, load_json

FHIR = "https://fhir.example.org/r4"
TOKEN = "secret-access-token-value"


@pytest.fixture
def traced():
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                      "CDS_LOG_LEVEL": "ERROR", "CDS_ALLOWED_FHIR_SERVERS": FHIR})
    exporter = InMemorySpanExporter()
    assert tracing.init_app(app, exporter, simple=True) is not None
    yield app, exporter
    FlaskInstrumentor().uninstrument_app(app)
    RequestsInstrumentor().uninstrument()


def _fetching_request() -> dict:
    """A scenario whose conditions and observations must be fetched from the FHIR server."""
    body = load_json(SCENARIOS / "ivig-no-iga" / "request.json")
    prefetch = body["prefetch"]
    for key in ("conditions", "observations"):
        bundle = prefetch.pop(key)
        rtype = "Condition" if key == "conditions" else "Observation"
        responses.add(responses.GET, re.compile(f"{re.escape(FHIR)}/{rtype}.*"), json=bundle)
    prefetch.pop("allergies", None)
    responses.add(responses.GET, re.compile(f"{re.escape(FHIR)}/AllergyIntolerance.*"),
                  json={"resourceType": "Bundle", "type": "searchset", "total": 0})
    body["fhirServer"] = FHIR
    body["fhirAuthorization"] = {"access_token": TOKEN, "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "cds-service"}
    return body


def _everything(span) -> str:
    return json.dumps([span.name, dict(span.attributes or {}), [(e.name, dict(e.attributes or {})) for e in span.events],
                       span.status.description or ""], default=str)


@responses.activate
def test_a_hook_call_is_one_span_with_service_and_card_count_and_a_child_span_per_fetch(traced):
    app, exporter = traced
    body = _fetching_request()
    resp = app.test_client().post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 200
    cards = resp.get_json()["cards"]
    spans = exporter.get_finished_spans()
    servers = [s for s in spans if s.kind.name == "SERVER"]
    assert len(servers) == 1
    server = servers[0]
    assert server.attributes["cds.service_id"] == "mg-order-select"
    assert server.attributes["cds.hook"] == "order-select"
    assert server.attributes["cds.card_count"] == len(cards)
    fetches = [s for s in spans if s.kind.name == "CLIENT"]
    # observations and the code-filtered labs search are both Observation fetches
    assert sorted(s.name for s in fetches) == ["GET AllergyIntolerance", "GET Condition", "GET Observation",
                                               "GET Observation"]
    for span in fetches:
        assert span.parent is not None and span.parent.span_id == server.context.span_id
        assert span.context.trace_id == server.context.trace_id
    assert len(responses.calls) == 4 and all("patient=" in c.request.url for c in responses.calls)


@responses.activate
def test_no_span_holds_the_patient_id_a_query_string_or_the_token(traced):
    app, exporter = traced
    body = _fetching_request()
    patient = body["context"]["patientId"]
    client = app.test_client()
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200
    responses.replace(responses.GET, re.compile(f"{re.escape(FHIR)}/Condition.*"),
                      body=ConnectionError(f"cannot reach {FHIR}/Condition?patient={patient}"))
    client.post("/cds-services/mg-order-select", json=body)  # a failed fetch records an exception
    client.post(f"/cds-services/mg-order-select/feedback?patient={patient}", json={"feedback": [
        {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T12:00:00Z"}]})
    spans = exporter.get_finished_spans()
    assert len(spans) >= 6
    assert any(e.name == "exception" for s in spans for e in s.events)  # the failure is there, redacted
    for span in spans:
        text = _everything(span)
        assert patient not in text and TOKEN not in text, text
        assert "patient=" not in text, text
    urls = [v for s in spans for k, v in (s.attributes or {}).items() if k in ("url.full", "http.url")]
    assert any(u.endswith("/Observation?{query}") for u in urls), urls


def test_health_and_metrics_calls_are_not_traced(traced):
    app, exporter = traced
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200
    assert client.get("/cds-services").status_code == 200
    assert [s.name for s in exporter.get_finished_spans()] == ["GET /cds-services"]


def test_tracing_is_off_without_an_endpoint(monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_LOG_LEVEL": "ERROR"})
    assert tracing.init_app(app) is None


@pytest.mark.parametrize("raw,clean", [
    ("https://ehr.example/fhir/Observation?patient=123&code=x", "https://ehr.example/fhir/Observation?{query}"),
    ("https://ehr.example/fhir/Patient/123", "https://ehr.example/fhir/Patient/{id}"),
    ("GET /fhir/MedicationRequest/abc-9.1?_format=json", "GET /fhir/MedicationRequest/{id}?{query}"),
    ("application/fhir+json", "application/fhir+json"),
])
def test_redact(raw, clean):
    assert tracing.redact(raw) == clean
