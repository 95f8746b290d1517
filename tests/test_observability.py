"""Prometheus metrics and the preview page's JSON endpoints."""
from __future__ import annotations

import pytest
import responses

from cds_service import create_app

from .conftest import SCENARIOS, load_json


@pytest.fixture
def app_preview():
    return create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                       "CDS_LOG_LEVEL": "ERROR", "CDS_PREVIEW": True, "CDS_FIXTURES_DIR": str(SCENARIOS)})


@pytest.fixture
def config(config):
    """The responses-mocked FHIR server does not resolve here: allowlisted (cds_service/egress.py)."""
    return {**config, "CDS_ALLOWED_FHIR_SERVERS": "https://fhir.example.org"}


def metric(client, name: str, **labels) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@responses.activate
def test_metrics_count_requests_cards_fetches_and_feedback(client):
    before_cards = metric(client, "mgcds_cards_total", rule="mg-exacerbating-drug", indicator="critical")
    body = client.post("/cds-services/mg-order-select",
                       json=load_json(SCENARIOS / "macrolide-grade3" / "request.json")).get_json()
    assert metric(client, "mgcds_cards_total", rule="mg-exacerbating-drug", indicator="critical") == before_cards + 1
    assert metric(client, "mgcds_request_seconds_count", route="invoke", service="mg-order-select", status="200") >= 1
    before_fb = metric(client, "mgcds_feedback_total", rule="mg-exacerbating-drug", outcome="accepted")
    client.post("/cds-services/mg-order-select/feedback", json={"feedback": [
        {"card": body["cards"][0]["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-25T12:00:00Z"}]})
    assert metric(client, "mgcds_feedback_total", rule="mg-exacerbating-drug", outcome="accepted") == before_fb + 1
    request = load_json(SCENARIOS / "ivig-no-iga" / "request.json")
    del request["prefetch"]["observations"]
    request["fhirServer"] = "https://fhir.example.org"
    responses.get("https://fhir.example.org/Observation", status=503)
    before = metric(client, "mgcds_prefetch_fetch_total", key="observations", outcome="failed")
    client.post("/cds-services/mg-order-select", json=request)
    assert metric(client, "mgcds_prefetch_fetch_total", key="observations", outcome="failed") == before + 1


def test_preview_is_off_by_default(client):
    assert client.get("/preview").status_code == 404


def test_preview_api(app_preview):
    c = app_preview.test_client()
    assert c.get("/preview").status_code == 200
    names = {s["name"]: s for s in c.get("/preview-api/scenarios").get_json()}
    assert names["pv-crisis-grade4"]["service"] == "mg-patient-view"
    request = c.get("/preview-api/scenarios/pv-crisis-grade4").get_json()
    explained = c.post("/preview-api/explain/mg-patient-view", json=request).get_json()
    assert explained["grade"] == 4
    assert c.get("/preview-api/scenarios/..%2Fetc").status_code == 404
    assert c.get("/preview/secret.py").status_code == 404


def test_unknown_service_ids_do_not_create_metric_series(client):
    for i in range(5):
        client.post(f"/cds-services/random-{i}", json={})
    text = client.get("/metrics").get_data(as_text=True)
    assert "random-" not in text
