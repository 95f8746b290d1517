"""CDS Hooks 2.0 protocol: discovery, request validation, error statuses,
spec example messages, CORS and health."""
from __future__ import annotations

import json

import pytest
import responses

from cds_service.cards import Action, Card, CDSResponse

from .conftest import CONFORMANCE, SCENARIOS, load_json

SPEC = CONFORMANCE / "spec-2.0.1"
KEYS = {"patient", "conditions", "observations", "medications", "administrations", "procedures", "serviceRequests",
        "labs", "allergies"}  # the last two added in rules version 2 (design contract)


@pytest.fixture
def config(config):
    """The responses-mocked FHIR servers of these requests (the spec's is plain http): allowlisted (egress.py)."""
    return {**config, "CDS_ALLOWED_FHIR_SERVERS": "http://hooks.smarthealthit.org:9080, https://ehr.example.org/fhir, "
                                                  "https://fhir.example.org"}


def scenario(name: str) -> dict:
    return load_json(SCENARIOS / name / "request.json")


def outcome_text(resp) -> str:
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["details"]["text"]


def test_discovery_lists_the_three_services(client):
    services = {s["id"]: s for s in client.get("/cds-services").get_json()["services"]}
    assert {k: v["hook"] for k, v in services.items()} == {
        "mg-order-select": "order-select", "mg-order-sign": "order-sign", "mg-patient-view": "patient-view"}
    for s in services.values():
        assert set(s["prefetch"]) == KEYS
        assert all("{{context.patientId}}" in t for t in s["prefetch"].values())
        assert s["title"] and s["description"] and s["usageRequirements"]


def test_healthz(client):
    assert client.get("/healthz").get_json()["status"] == "ok"


@pytest.mark.parametrize("name", ["response-cards.json", "response-no-cards.json", "response-system-actions.json"])
def test_spec_responses_round_trip_through_the_model(name):
    example = load_json(SPEC / name)
    assert CDSResponse.from_json(example).to_json() == example


def test_autolaunchable_link_example_round_trips_once_it_has_the_required_indicator():
    example = load_json(SPEC / "response-autolaunchable-link.json")
    with pytest.raises(KeyError):  # the example omits indicator, which the spec prose makes required
        CDSResponse.from_json(example)
    example["cards"][0]["indicator"] = "info"
    assert CDSResponse.from_json(example).to_json() == example


@pytest.mark.parametrize("name", ["action-create.json", "action-update.json", "action-delete.json"])
def test_spec_actions_round_trip(name):
    example = load_json(SPEC / name)
    assert Action.from_json(example).to_json() == example


def test_card_parts_round_trip():
    source = load_json(SPEC / "card-source-with-topic.json")["source"]
    reasons = load_json(SPEC / "card-override-reasons.json")["overrideReasons"]
    card = {"uuid": "x", "summary": "s", "indicator": "info", "source": source, "overrideReasons": reasons}
    assert Card.from_json(card).to_json() == card


def test_card_model_never_sends_empty_optional_fields():
    out = Card(summary="s", indicator="info", source=Card.from_json(
        {"summary": "s", "indicator": "info", "source": {"label": "x"}}).source).to_json()
    assert set(out) == {"summary", "indicator", "source", "uuid"}
    with pytest.raises(ValueError):
        Card(summary="x" * 140, indicator="info", source=out and Card.from_json(out).source)


def mock_empty_searches(base: str) -> None:
    """Every search the services' prefetch templates make answers an empty searchset."""
    for rtype in ("Condition", "Observation", "MedicationRequest", "MedicationAdministration", "Procedure",
                  "ServiceRequest", "AllergyIntolerance"):
        responses.get(f"{base}/{rtype}", json={"resourceType": "Bundle", "type": "searchset", "entry": []})


@responses.activate
def test_spec_patient_view_request_is_accepted(client):
    body = load_json(SPEC / "request-patient-view.json")
    base = body["fhirServer"]
    mock_empty_searches(base)
    resp = client.post("/cds-services/mg-patient-view", json=body)
    assert resp.status_code == 200
    assert resp.get_json() == {"cards": []}
    # the Patient arrived under the key 'patientToGreet': it is not fetched again
    assert not any("/Patient/" in c.request.url for c in responses.calls)
    assert all(c.request.headers["Authorization"] == "Bearer some-opaque-fhir-access-token" for c in responses.calls)


def test_spec_request_with_extension_is_accepted(client):
    body = load_json(SPEC / "request-with-extension.json")
    body.pop("fhirServer")
    body["context"]["patientId"] = "1288992"  # the spec fragment omits the required patientId
    body["prefetch"] = {"patient": {"resourceType": "Patient", "id": "1288992"}, "conditions": None}
    resp = client.post("/cds-services/mg-patient-view", json=body)
    assert resp.status_code == 200


def test_spec_prefetch_example_pools_resources_and_ignores_non_resources(client):
    prefetch = load_json(SPEC / "request-prefetch-data.json")["prefetch"]
    body = {"hook": "patient-view", "hookInstance": "i", "context": {"userId": "Practitioner/1", "patientId": "1"},
            "prefetch": {**prefetch, "conditions": None}}
    resp = client.post("/cds-services/mg-patient-view", json=body)
    assert resp.status_code == 200  # 'user': '123' is not a resource: ignored, not an error


@pytest.mark.parametrize("hook,fname", [("order-select", "order-select-context-r4.json"),
                                        ("order-sign", "order-sign-context-r4.json"),
                                        ("patient-view", "patient-view-context-1.json"),
                                        ("patient-view", "patient-view-context-2.json")])
def test_hook_library_contexts_are_accepted(client, hook, fname):
    context = load_json(CONFORMANCE / "hook-library-1.0.1" / fname)["context"]
    context.setdefault("patientId", "1288992")
    context.setdefault("userId", "Practitioner/example")
    body = {"hook": hook, "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "context": context,
            "prefetch": {"patient": {"resourceType": "Patient", "id": context["patientId"]}, "conditions": None}}
    resp = client.post(f"/cds-services/mg-{hook}", json=body)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"cards": []}


@responses.activate
def test_ballot_paginated_order_sign_is_accepted(client):
    body = load_json(CONFORMANCE / "ballot-3.0.0" / "request-order-sign-paginated-prefetch.json")
    base = body["fhirServer"]
    responses.get(f"{base}/Patient/1288992", json={"resourceType": "Patient", "id": "1288992"})
    mock_empty_searches(base)
    resp = client.post("/cds-services/mg-order-sign", json=body)
    assert resp.status_code == 200
    assert resp.get_json() == {"cards": []}


# ------------------------------------------------------------------ request errors
def test_malformed_json_is_400(client):
    resp = client.post("/cds-services/mg-order-select", data="{not json", content_type="application/json")
    assert resp.status_code == 400
    assert "not valid JSON" in outcome_text(resp)


def test_invalid_utf8_is_400(client):
    resp = client.post("/cds-services/mg-order-select", data=b'{"hook": "\xff\xfe"}', content_type="application/json")
    assert resp.status_code == 400


def test_deeply_nested_json_is_400(client):
    resp = client.post("/cds-services/mg-order-select", data="[" * 100000 + "]" * 100000,
                       content_type="application/json")
    assert resp.status_code == 400


def test_wrong_content_type_is_415(client):
    resp = client.post("/cds-services/mg-order-select", data="{}", content_type="text/plain")
    assert resp.status_code == 415


def test_unknown_service_is_404(client):
    resp = client.post("/cds-services/nope", json=scenario("ivig-no-iga"))
    assert resp.status_code == 404
    assert "nope" in outcome_text(resp)


def test_wrong_hook_is_400_naming_the_hook(client):
    resp = client.post("/cds-services/mg-patient-view", json=scenario("ivig-no-iga"))
    assert resp.status_code == 400
    assert "order-select" in outcome_text(resp) and "patient-view" in outcome_text(resp)


@pytest.mark.parametrize("path,expected", [
    (("hookInstance",), "hookInstance is required"),
    (("context", "patientId"), "context.patientId is required"),
    (("context", "selections"), "context.selections is required"),
    (("context", "draftOrders"), "context.draftOrders is required"),
    (("context",), "context is required"),
])
def test_missing_fields_are_400_naming_the_field(client, path, expected):
    body = scenario("ivig-no-iga")
    target = body
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400
    assert outcome_text(resp) == expected
    assert resp.get_json()["issue"][0]["expression"] == [".".join(path)]


def test_draft_orders_must_be_a_bundle(client):
    body = scenario("ivig-no-iga")
    body["context"]["draftOrders"] = {"resourceType": "MedicationRequest"}
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400 and "Bundle" in outcome_text(resp)


def test_selection_must_reference_a_draft(client):
    body = scenario("ivig-no-iga")
    body["context"]["selections"] = ["MedicationRequest/not-there"]
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400 and "not-there" in outcome_text(resp)


def test_dstu2_medication_order_is_400_naming_the_version(client):
    body = scenario("ivig-no-iga")
    entry = body["context"]["draftOrders"]["entry"][0]["resource"]
    entry["resourceType"] = "MedicationOrder"
    body["context"]["selections"] = [f"MedicationOrder/{entry['id']}"]
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400 and "DSTU2" in outcome_text(resp)


def test_r5_medication_request_is_400_naming_the_version(client):
    body = scenario("ivig-no-iga")
    entry = body["context"]["draftOrders"]["entry"][0]["resource"]
    entry["medication"] = {"concept": entry.pop("medicationCodeableConcept")}
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400 and "R5" in outcome_text(resp)


def test_fhir_authorization_needs_its_access_token(client):
    # the fields no fetch reads (expires_in, scope, subject) are tolerated: tests/test_tolerance.py
    body = scenario("ivig-no-iga")
    body["fhirServer"] = "https://fhir.example.org"
    body["fhirAuthorization"] = {"token_type": "Bearer", "expires_in": 300, "scope": "s", "subject": "c"}
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400 and "fhirAuthorization.access_token" in outcome_text(resp)


def test_body_over_the_limit_is_413():
    from cds_service import create_app
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_MAX_BODY_BYTES": 1000})
    resp = app.test_client().post("/cds-services/mg-order-select", json=scenario("ivig-no-iga"))
    assert resp.status_code == 413
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_get_on_a_service_is_405_operation_outcome(client):
    resp = client.get("/cds-services/mg-order-select")
    assert resp.status_code == 405
    assert resp.get_json()["resourceType"] == "OperationOutcome"


# ------------------------------------------------------------------ CORS, logs
def test_cors_preflight_needs_no_auth():
    from cds_service import create_app
    app = create_app({"CDS_AUTH_MODE": "jwt", "CDS_FEEDBACK_DB": ":memory:"})
    resp = app.test_client().options("/cds-services/mg-order-select", headers={
        "Origin": "https://sandbox.cds-hooks.org", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]


def test_cors_restricted_origins():
    from cds_service import create_app
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_CORS_ORIGINS": "https://a.example"})
    c = app.test_client()
    assert c.get("/cds-services", headers={"Origin": "https://a.example"}).headers["Access-Control-Allow-Origin"] == "https://a.example"
    assert "Access-Control-Allow-Origin" not in c.get("/cds-services", headers={"Origin": "https://b.example"}).headers


@responses.activate
def test_logs_carry_no_token_or_patient_data(config, capfd):
    from cds_service import create_app
    client = create_app({**config, "CDS_LOG_LEVEL": "INFO"}).test_client()
    body = scenario("pv-crisis-grade4")
    body["fhirServer"] = "https://fhir.example.org/r4"
    body["fhirAuthorization"] = {"access_token": "CANARY-TOKEN-123", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "mg-cds"}
    body["prefetch"]["patient"]["name"] = [{"family": "Canaryname", "given": ["Zed"]}]
    body["prefetch"]["patient"]["identifier"] = [{"system": "urn:mrn", "value": "MRN-778899"}]
    del body["prefetch"]["observations"]
    responses.get("https://fhir.example.org/r4/Observation", status=500)
    client.post("/cds-services/mg-patient-view", json=body)
    client.post("/cds-services/mg-patient-view", json={**body, "hook": "order-select"})
    client.post("/cds-services/mg-patient-view", data=json.dumps(body)[:-5], content_type="application/json")
    out, err = capfd.readouterr()
    logs = out + err
    assert '"event":"request"' in logs
    for secret in ("CANARY-TOKEN-123", "Canaryname", "MRN-778899", "mg-pt-1"):
        assert secret not in logs


def test_ids_are_random_version_4_uuids_and_a_forked_worker_draws_its_own():
    import os
    import uuid

    from cds_service import ids
    drawn = [ids.new_uuid() for _ in range(3 * ids.BATCH)]  # crosses batch refills
    assert len(set(drawn)) == len(drawn)
    assert all(uuid.UUID(u).version == 4 and str(uuid.UUID(u)) == u for u in drawn)
    assert uuid.UUID(hex=ids.new_hex_id()).version == 4
    ids.new_uuid()  # the parent holds a part-used batch
    parents_next = list(ids._pool)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a gunicorn worker: must not hand out the parent's remaining ids
        try:
            os.write(write, ids.new_uuid().encode())
        finally:
            os._exit(0)  # never back into pytest
    os.waitpid(pid, 0)
    child_id = os.read(read, 64).decode()
    assert child_id not in {str(uuid.UUID(bytes=b, version=4)) for b in parents_next}
