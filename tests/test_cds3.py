"""CDS Hooks 3.0 readiness that does not break 2.0 clients (issue 17, item 5): discovery's
`version` and `hookVersion`, override reasons from the ballot's Non-Adherence Reason Codes where
they fit (previously issued local codes still accepted in feedback), and an OperationOutcome on
every non-2xx answer, each error path documented in /openapi.json."""
from __future__ import annotations

import re

import jsonschema
import pytest

from cds_service import create_app
from cds_service.cards import CDSResponse
from cds_service.service import CDS_HOOKS_VERSION, ServiceDefinition
from cds_service.storage import StorageUnavailable
from hooks.knowledge import load
from tests.conftest import NOW, SCENARIOS, load_json
from tests.test_tolerance import EXTERNAL

HL7_REASONS = "http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def _config(**extra) -> dict:
    return {"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW, "CDS_LOG_LEVEL": "CRITICAL",
            **extra}


def _concepts(concepts: list[dict]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in concepts:
        out[c["code"]] = c["display"]
        out.update(_concepts(c.get("concept", [])))
    return out


# ------------------------------------------------------------------ discovery
def test_discovery_states_the_cds_hooks_version_and_the_hook_version(client):
    services = client.get("/cds-services").get_json()["services"]
    assert {s["id"] for s in services} == {"mg-order-select", "mg-order-sign", "mg-patient-view"}
    for s in services:
        assert SEMVER.match(s["version"]) and s["version"] == CDS_HOOKS_VERSION
        assert s["version"].startswith("2.")  # the spec implemented is 2.0: a 3.0 client must not assume 3.0
        assert s["hookVersion"] == "1.0"
        assert s["usageRequirements"]  # kept (2.0 and 3.0)
        assert s["title"] and s["description"] and s["prefetch"]


def test_discovery_fits_the_openapi_document_and_the_2_0_example_still_does(client):
    doc = client.get("/openapi.json").get_json()
    schema = {"$ref": "#/components/schemas/Discovery", "components": doc["components"]}
    jsonschema.validate(client.get("/cds-services").get_json(), schema)
    jsonschema.validate(load_json(SCENARIOS.parent.parent / "tests" / "conformance" / "spec-2.0.1"
                                  / "discovery-response.json"), schema)


def test_a_service_without_a_hook_version_omits_it():
    entry = ServiceDefinition(id="x", hook="patient-view", title="t", description="d", prefetch={},
                              evaluate=lambda h: CDSResponse()).discovery()
    assert entry["version"] == CDS_HOOKS_VERSION and "hookVersion" not in entry and "usageRequirements" not in entry


# ------------------------------------------------------------------ override reasons
def test_standard_override_reasons_are_codes_of_the_ballot_code_system_with_its_display():
    system = load_json(EXTERNAL / "hl7-cds-hooks" / "CodeSystem-non-adherence-reason-codes.json")
    assert system["url"] == HL7_REASONS
    concepts = _concepts(system["concept"])
    override = load().rules["override_reasons"]
    standard = [r for r in override["reasons"] if r.get("system") == HL7_REASONS]
    assert len(standard) >= 3
    for r in standard:
        assert concepts.get(r["code"]) == r["display"], r["code"]
    for r in override["reasons"]:
        assert r.get("system", override["system"]) in (HL7_REASONS, "urn:mg-cds:override-reason")
        assert r["display"]  # the spec: SHALL provide a display
    used = {c for codes in override["by_rule"].values() for c in codes}
    assert used == {r["code"] for r in override["reasons"]}
    replaced = {r["replaces"] for r in override["reasons"] if "replaces" in r}
    assert replaced == {r["code"] for r in override["previously_issued"]}
    assert not replaced & used  # an old code is never offered again


def test_a_card_offers_the_standard_reasons(client):
    body = load_json(SCENARIOS / "beta-blocker-atc-class" / "request.json")
    cards = client.post("/cds-services/mg-order-select", json=body).get_json()["cards"]
    card = next(c for c in cards if c["source"]["topic"]["code"] == "mg-exacerbating-drug")
    reasons = {(r["system"], r["code"]) for r in card["overrideReasons"]}
    assert (HL7_REASONS, "risk-benefit-ratio") in reasons
    assert (HL7_REASONS, "action-performed-no-adverse-effect") in reasons
    assert all(r["display"] for r in card["overrideReasons"])


@pytest.mark.parametrize("reason", load().rules["override_reasons"]["previously_issued"], ids=lambda r: r["code"])
def test_feedback_with_a_previously_issued_reason_is_still_accepted(client, app, reason):
    feedback = {"feedback": [{"card": "0f3b0d0e-1111-4c2a-9a55-8d1b8c1e0001", "outcome": "overridden",
                              "outcomeTimestamp": "2026-11-25T12:00:00Z",
                              "overrideReason": {"reason": {"code": reason["code"], "system": "urn:mg-cds:override-reason",
                                                            "display": reason["display"]}}}]}
    resp = client.post("/cds-services/mg-order-select/feedback", json=feedback)
    assert resp.status_code == 200
    rows = app.extensions["mg_cds"]["feedback"].all()
    assert [(r["override_code"], r["override_system"]) for r in rows] == [(reason["code"], "urn:mg-cds:override-reason")]


# ------------------------------------------------------------------ every error path carries an OperationOutcome
def _boom(hook_input):
    raise RuntimeError("a bug")


def _failing_store(app):
    store = app.extensions["mg_cds"]["feedback"]

    def down(*args, **kwargs):
        raise StorageUnavailable("the service's database does not answer; retry later")
    store.ping = down
    store.add = down


FEEDBACK = {"feedback": [{"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-25T12:00:00Z"}]}
ERROR_PATHS = [
    # status, path template in the OpenAPI document, method, how to call
    (400, "/cds-services/{id}", "post", lambda c: c.post("/cds-services/mg-order-select", data=b"{not json",
                                                          content_type="application/json")),
    (401, "/cds-services/{id}", "post", "jwt"),
    (404, "/cds-services/{id}", "post", lambda c: c.post("/cds-services/nope", json={})),
    (405, "/cds-services/{id}", "post", lambda c: c.get("/cds-services/mg-order-select")),
    (412, "/cds-services/{id}", "post", lambda c: c.post("/cds-services/mg-patient-view", json={
        "hook": "patient-view", "hookInstance": "i", "context": {"patientId": "p1"}})),
    (413, "/cds-services/{id}", "post", "small"),
    (415, "/cds-services/{id}", "post", lambda c: c.post("/cds-services/mg-order-select", data="{}",
                                                          content_type="text/plain")),
    (500, "/cds-services/{id}", "post", "boom"),
    (503, "/cds-services/{id}/feedback", "post", "down"),
    (503, "/readyz", "get", "down-ready"),
]


def _call(kind):
    if callable(kind):
        app = create_app(_config())
        return app, kind(app.test_client())
    if kind == "jwt":
        app = create_app(_config(CDS_AUTH_MODE="jwt"))
        return app, app.test_client().post("/cds-services/mg-order-select", json={})
    if kind == "small":
        app = create_app(_config(CDS_MAX_BODY_BYTES=100))
        return app, app.test_client().post("/cds-services/mg-order-select", json={"x": "y" * 200})
    if kind == "boom":
        service = ServiceDefinition(id="boom", hook="patient-view", title="t", description="d", prefetch={},
                                    evaluate=_boom)
        app = create_app(_config(), services=[service])
        return app, app.test_client().post("/cds-services/boom", json={
            "hook": "patient-view", "hookInstance": "i", "context": {"patientId": "p1"}})
    app = create_app(_config())
    _failing_store(app)
    if kind == "down":
        return app, app.test_client().post("/cds-services/mg-order-select/feedback", json=FEEDBACK)
    return app, app.test_client().get("/readyz")


@pytest.mark.parametrize("status,path,method,kind", ERROR_PATHS, ids=[f"{e[0]}-{e[1]}" for e in ERROR_PATHS])
def test_every_error_answer_is_an_operation_outcome_documented_in_openapi(status, path, method, kind):
    app, resp = _call(kind)
    assert resp.status_code == status
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    issue = body["issue"][0]
    assert issue["severity"] == "error" and issue["code"] and issue["details"]["text"]
    doc = app.test_client().get("/openapi.json").get_json()
    jsonschema.validate(body, {"$ref": "#/components/schemas/OperationOutcome", "components": doc["components"]})
    service_id = "boom" if kind == "boom" else "mg-order-select"
    documented = doc["paths"][path.replace("{id}", service_id)][method]["responses"]
    assert str(status) in documented, f"{status} is not documented for {method.upper()} {path}"


def test_the_ballot_412_example_is_the_shape_we_send():
    example = load_json(SCENARIOS.parent.parent / "tests" / "conformance" / "ballot-3.0.0"
                        / "response-412-operationoutcome.json")
    _, resp = _call(ERROR_PATHS[4][3])
    ours = resp.get_json()
    assert ours["resourceType"] == example["resourceType"] == "OperationOutcome"
    assert set(ours["issue"][0]) == set(example["issue"][0])  # severity, code, details, diagnostics, expression
    assert ours["issue"][0]["code"] == example["issue"][0]["code"] == "processing"
    assert ours["issue"][0]["expression"] == ["prefetch.conditions"]


def test_openapi_documents_readyz_and_the_other_plain_routes(client):
    paths = client.get("/openapi.json").get_json()["paths"]
    for route in ("/cds-services", "/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert "get" in paths[route], route
    ready = client.get("/readyz")
    assert ready.status_code == 200
    doc = client.get("/openapi.json").get_json()
    jsonschema.validate(ready.get_json(), {**paths["/readyz"]["get"]["responses"]["200"]["content"]
                                           ["application/json"]["schema"], "components": doc["components"]})
