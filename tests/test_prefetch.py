"""Prefetch completion: templates, FHIR fallback fetch with responses-mocked
HTTP, null keys, 412 for required data, degraded answers, paging."""
from __future__ import annotations

import json
import re

import pytest
import requests
import responses

from cds_service import create_app
from cds_service.prefetch import TemplateError, render, template_values

from .conftest import SCENARIOS, load_json

BASE = "https://fhir.example.org/r4"
AUTH = {"access_token": "secret-token", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
        "subject": "mg-cds"}


def cards(resp) -> dict[str, str]:
    assert resp.status_code == 200, resp.get_json()
    return {c["source"]["topic"]["code"]: c["indicator"] for c in resp.get_json()["cards"]}


def with_server(name: str, *drop: str) -> tuple[dict, dict]:
    body = load_json(SCENARIOS / name / "request.json")
    original = dict(body["prefetch"])
    for key in drop:
        del body["prefetch"][key]
    body["fhirServer"], body["fhirAuthorization"] = BASE, AUTH
    return body, original


def test_template_tokens():
    values = template_values({"patientId": "p1", "userId": "PractitionerRole/r9", "encounterId": "e1"})
    assert render("Observation?patient={{context.patientId}}&x={{ context.encounterId }}", values) == \
        "Observation?patient=p1&x=e1"
    assert render("PractitionerRole?_id={{userPractitionerRoleId}}", values) == "PractitionerRole?_id=r9"
    with pytest.raises(TemplateError):
        render("Practitioner/{{userPractitionerId}}", values)


@responses.activate
def test_absent_key_is_fetched_and_gives_the_same_cards(client):
    body, original = with_server("ivig-dose-too-high", "observations")
    responses.get(f"{BASE}/Observation", json=original["observations"])
    fetched = cards(client.post("/cds-services/mg-order-select", json=body))
    prefetched = cards(client.post("/cds-services/mg-order-select",
                                   json=load_json(SCENARIOS / "ivig-dose-too-high" / "request.json")))
    assert fetched == prefetched == {"ivig-dose-check": "warning"}
    call = responses.calls[0].request
    assert call.headers["Authorization"] == "Bearer secret-token"
    assert "patient=mg-pt-1" in call.url and "_count=500" in call.url


@responses.activate
def test_all_keys_fetched_concurrently_when_nothing_is_prefetched(client):
    body, original = with_server("pv-crisis-grade4", *list(load_json(SCENARIOS / "pv-crisis-grade4" / "request.json")["prefetch"]))
    responses.get(f"{BASE}/Patient/mg-pt-1", json=original["patient"])
    for key, rtype in (("conditions", "Condition"), ("observations", "Observation"), ("medications", "MedicationRequest"),
                       ("administrations", "MedicationAdministration"), ("procedures", "Procedure"),
                       ("serviceRequests", "ServiceRequest")):
        responses.get(f"{BASE}/{rtype}", json=original[key])
    assert cards(client.post("/cds-services/mg-patient-view", json=body))["mg-severe-management"] == "critical"
    assert len(responses.calls) == 7


@responses.activate
def test_null_key_is_not_fetched(client):
    body, _ = with_server("ivig-no-iga")
    body["prefetch"]["observations"] = None
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 200
    assert len(responses.calls) == 0


@pytest.mark.parametrize("status", [401, 403, 404])
@responses.activate
def test_required_data_refused_by_fhir_is_412(client, status):
    body, _ = with_server("ivig-no-iga", "conditions")
    responses.get(f"{BASE}/Condition", status=status, json={"resourceType": "OperationOutcome"})
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412
    text = resp.get_json()["issue"][0]["details"]["text"]
    assert "conditions" in text and str(status) in text
    assert "secret-token" not in resp.get_data(as_text=True)


@responses.activate
def test_required_data_timeout_is_412(client):
    body, _ = with_server("ivig-no-iga", "patient")
    responses.get(f"{BASE}/Patient/mg-pt-1", body=requests.Timeout())
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412
    assert "timed out" in resp.get_json()["issue"][0]["details"]["text"]


def test_required_data_without_fhir_server_is_412(client):
    body = load_json(SCENARIOS / "ivig-no-iga" / "request.json")
    del body["prefetch"]["conditions"]
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412
    assert "no fhirServer" in resp.get_json()["issue"][0]["details"]["text"]


@responses.activate
def test_server_not_on_allowlist_is_never_called():
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:",
                      "CDS_ALLOWED_FHIR_SERVERS": "https://trusted.example.org/fhir"})
    body, _ = with_server("ivig-no-iga", "conditions")
    resp = app.test_client().post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412 and "allowlist" in resp.get_json()["issue"][0]["details"]["text"]
    assert len(responses.calls) == 0


@responses.activate
def test_failed_optional_query_degrades_the_answer(client):
    body, _ = with_server("ivig-no-iga", "observations")
    responses.get(f"{BASE}/Observation", status=500)
    fired = cards(client.post("/cds-services/mg-order-select", json=body))
    assert fired["ivig-iga-unknown"] == "warning"
    detail = client.post("/cds-services/mg-order-select", json=body).get_json()["cards"][0]["detail"]
    assert "could not be retrieved" in detail


@responses.activate
def test_pagination_is_followed(client):
    body, original = with_server("ivig-all-clear", "observations")
    entries = original["observations"]["entry"]
    pages = {1: entries[:1], 2: entries[1:2], 3: entries[2:]}

    def page(request):
        n = int(re.search(r"page=(\d+)", request.url).group(1)) if "page=" in request.url else 1
        bundle = {"resourceType": "Bundle", "type": "searchset", "entry": pages[n]}
        if n < 3:
            bundle["link"] = [{"relation": "next", "url": f"{BASE}/Observation?page={n + 1}"}]
        return 200, {}, json.dumps(bundle)
    responses.add_callback(responses.GET, re.compile(f"{re.escape(BASE)}/Observation.*"), callback=page)
    assert cards(client.post("/cds-services/mg-order-select", json=body)) == {}  # IgA (page 3) was read
    assert len(responses.calls) == 3


@responses.activate
def test_pagination_is_capped_and_loops_stop():
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_FHIR_MAX_PAGES": 3})
    body, _ = with_server("ivig-no-iga", "observations")
    counter = {"n": 0}

    def endless(request):
        counter["n"] += 1
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [],
                                    "link": [{"relation": "next", "url": f"{BASE}/Observation?page={counter['n'] + 1}"}]})
    responses.add_callback(responses.GET, re.compile(f"{re.escape(BASE)}/Observation.*"), callback=endless)
    assert app.test_client().post("/cds-services/mg-order-select", json=body).status_code == 200
    assert counter["n"] == 3

    responses.reset()
    loop = {"resourceType": "Bundle", "type": "searchset", "entry": [],
            "link": [{"relation": "next", "url": f"{BASE}/Observation?page=1"}]}
    responses.get(re.compile(f"{re.escape(BASE)}/Observation.*"), json=loop)
    assert app.test_client().post("/cds-services/mg-order-select", json=body).status_code == 200
    assert len(responses.calls) == 2  # the first page and its self-referencing next, then stop


@responses.activate
def test_next_link_to_another_server_is_not_followed(client):
    body, _ = with_server("ivig-no-iga", "observations")
    responses.get(f"{BASE}/Observation", json={"resourceType": "Bundle", "type": "searchset", "entry": [],
                                              "link": [{"relation": "next", "url": "http://169.254.169.254/latest"}]})
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200
    assert len(responses.calls) == 1


@responses.activate
def test_malformed_fhir_json_for_required_key_is_412(client):
    body, _ = with_server("ivig-no-iga", "conditions")
    responses.get(f"{BASE}/Condition", body="{truncated", content_type="application/fhir+json")
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412 and "not valid JSON" in resp.get_json()["issue"][0]["details"]["text"]


@responses.activate
def test_included_medications_resolve_medication_references(client):
    body, original = with_server("pv-active-beta-blocker", "medications")
    request = dict(original["medications"]["entry"][0]["resource"])
    request.pop("medicationCodeableConcept")
    request["medicationReference"] = {"reference": "Medication/med-1"}
    medication = {"resourceType": "Medication", "id": "med-1",
                  "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6918",
                                       "display": "metoprolol"}]}}
    responses.get(f"{BASE}/MedicationRequest", json={"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": request, "search": {"mode": "match"}}, {"resource": medication, "search": {"mode": "include"}}]})
    assert cards(client.post("/cds-services/mg-patient-view", json=body)) == {"mg-exacerbating-drug": "warning"}
    assert "_include=MedicationRequest%3Amedication" in responses.calls[0].request.url or \
        "_include=MedicationRequest:medication" in responses.calls[0].request.url
