"""Hostile input and FHIR server faults: each case has its expected status,
never a 500, and fallback fetches finish within the request deadline."""
from __future__ import annotations

import json
import time

import pytest

from cds_service import create_app

from .conftest import SCENARIOS, load_json
from .fault_fhir import FaultFHIR, resources_from_prefetch

DEADLINE = 1.5


@pytest.fixture(scope="module")
def fault_server():
    body = load_json(SCENARIOS / "ivig-dose-too-high" / "request.json")
    with FaultFHIR(resources_from_prefetch(body["prefetch"])) as server:
        yield server


@pytest.fixture
def fast_client():
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                      "CDS_LOG_LEVEL": "ERROR", "CDS_FHIR_READ_TIMEOUT": 0.5, "CDS_FHIR_CONNECT_TIMEOUT": 0.5,
                      "CDS_DEADLINE_SECONDS": DEADLINE, "CDS_FHIR_MAX_PAGES": 20,
                      "CDS_ALLOW_PRIVATE_FHIR_SERVERS": True})  # the fault server is on 127.0.0.1 (egress.py)
    return app.test_client()


def request_without(keys: tuple[str, ...], base: str | None) -> dict:
    body = load_json(SCENARIOS / "ivig-dose-too-high" / "request.json")
    for key in keys:
        del body["prefetch"][key]
    if base:
        body["fhirServer"] = base
        body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "mg-cds"}
    return body


# ------------------------------------------------------------------ FHIR server faults
def test_ok_server_gives_the_same_cards_as_prefetch(fault_server, fast_client):
    resp = fast_client.post("/cds-services/mg-order-select",
                            json=request_without(("observations", "conditions", "patient"), fault_server.base("ok")))
    assert resp.status_code == 200
    assert [c["source"]["topic"]["code"] for c in resp.get_json()["cards"]] == ["ivig-dose-check"]


@pytest.mark.parametrize("mode,required,expected", [
    ("slow", True, 412), ("e500", True, 412), ("e401", True, 412), ("e403", True, 412), ("e404", True, 412),
    ("badjson", True, 412), ("truncated", True, 412), ("endless", True, 200),
    ("slow", False, 200), ("e500", False, 200), ("badjson", False, 200), ("truncated", False, 200),
])
def test_faults_give_412_or_a_degraded_answer_within_the_deadline(fault_server, fast_client, mode, required, expected):
    key = "conditions" if required else "observations"
    started = time.monotonic()
    resp = fast_client.post("/cds-services/mg-order-select", json=request_without((key,), fault_server.base(mode)))
    elapsed = time.monotonic() - started
    assert resp.status_code == expected, resp.get_json()
    assert elapsed < DEADLINE + 1.0
    if expected == 412:
        assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_unreachable_server_is_412(fast_client):
    resp = fast_client.post("/cds-services/mg-order-select",
                            json=request_without(("conditions",), "http://127.0.0.1:9/fhir"))
    assert resp.status_code == 412


# ------------------------------------------------------------------ hostile bodies
def scenario_body() -> dict:
    return load_json(SCENARIOS / "ivig-no-iga" / "request.json")


def test_huge_string_field_is_handled(client):
    body = scenario_body()
    body["hookInstance"] = "x" * 2_000_000
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200


def test_huge_array_of_selections_is_400(client):
    body = scenario_body()
    body["context"]["selections"] = ["MedicationRequest/none"] * 100_000
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 400


def test_thousands_of_prefetch_entries(client):
    body = scenario_body()
    obs = body["prefetch"]["observations"]["entry"][0]["resource"]
    body["prefetch"]["observations"]["entry"] = [{"resource": {**obs, "id": f"o{i}"}} for i in range(5000)]
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200


@pytest.mark.parametrize("depth,expected", [(300, 200), (400, 400)])
def test_deeply_nested_bundles_in_prefetch(client, depth, expected):
    """300 nested Bundles (900 JSON levels) are unpacked without recursion; past 1,024 levels the
    body is refused as JSON."""
    body = json.dumps(scenario_body())
    nested = '{"resourceType": "Bundle", "entry": [{"resource": ' * depth + '{"resourceType": "Basic"}' + "}]}" * depth
    raw = body[:-1] + ', "extra": 0}'
    raw = raw.replace('"prefetch": {', f'"prefetch": {{"extra": {nested}, ', 1)
    resp = client.post("/cds-services/mg-order-select", data=raw, content_type="application/json")
    assert resp.status_code == expected


def test_duplicate_keys_last_wins(client):
    raw = (b'{"hook": "patient-view", "hook": "order-select", "hookInstance": "i", "context": {"userId": "P/1",'
           b' "patientId": "p", "selections": ["MedicationRequest/a"], "draftOrders": {"resourceType": "Bundle",'
           b' "entry": [{"resource": {"resourceType": "MedicationRequest", "id": "a"}}]}},'
           b' "prefetch": {"patient": {"resourceType": "Patient", "id": "p"}, "conditions": null}}')
    assert client.post("/cds-services/mg-order-select", data=raw, content_type="application/json").status_code == 200


@pytest.mark.parametrize("value", ["a string", 42, [1, 2], {"no": "resourceType"}, {"resourceType": 7}])
def test_prefetch_values_of_unexpected_types_are_ignored(client, value):
    body = scenario_body()
    body["prefetch"]["observations"] = value
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200


@pytest.mark.parametrize("context_value", [None, "text", [], 5])
def test_context_of_wrong_type_is_400(client, context_value):
    body = scenario_body()
    body["context"] = context_value
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 400


@pytest.mark.parametrize("raw", [b"", b"null", b"[]", b'"string"', b"123", b"{", b"\x00\x01"])
def test_non_object_bodies_are_400(client, raw):
    assert client.post("/cds-services/mg-order-select", data=raw, content_type="application/json").status_code == 400


def test_unexpected_resource_types_in_draft_orders(client):
    body = scenario_body()
    body["context"]["draftOrders"]["entry"].append({"resource": {"resourceType": "Weird", "id": "w"}})
    body["context"]["selections"].append("Weird/w")
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200


def test_resources_about_another_patient_are_ignored(client):
    body = load_json(SCENARIOS / "ivig-all-clear" / "request.json")
    for entry in body["prefetch"]["observations"]["entry"]:
        entry["resource"]["subject"] = {"reference": "Patient/someone-else"}
    cards = client.post("/cds-services/mg-order-select", json=body).get_json()["cards"]
    # the weight, IgA and eGFR are someone else's: none is read
    assert {c["source"]["topic"]["code"] for c in cards} == {"ivig-iga-unknown", "dose-weight-missing", "ivig-renal-check"}


# ------------------------------------------------------------------ a chart larger than the page cap
def big_chart(n_observations: int) -> tuple[dict, dict]:
    """ivig-all-clear's chart with ``n_observations`` Observations in all, newest first, whose IgA is
    the oldest: (request without observations, labs or allergies; the FHIR server's resources)."""
    body = load_json(SCENARIOS / "ivig-all-clear" / "request.json")
    entries = body["prefetch"]["observations"]["entry"]
    iga = next(e for e in entries if e["resource"]["code"]["coding"][0]["code"] == "2458-8")
    iga["resource"]["effectiveDateTime"] = "2025-12-01T09:00:00Z"
    recent = [e for e in entries if e is not iga]
    vitals = [{"resource": {"resourceType": "Observation", "id": f"hr-{i}", "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                            "subject": {"reference": "Patient/mg-pt-1"},
                            "effectiveDateTime": f"2026-11-{24 - i // 1000:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
                            "valueQuantity": {"value": 70, "unit": "/min", "system": "http://unitsofmeasure.org",
                                              "code": "/min"}}}
              for i in range(n_observations - len(entries))]
    server = resources_from_prefetch(body["prefetch"])
    server["Observation"] = {"resourceType": "Bundle", "type": "searchset", "entry": recent + vitals + [iga]}
    for key in ("observations", "labs", "allergies"):
        body["prefetch"].pop(key, None)
    return body, server


@pytest.mark.parametrize("n, complete", [(5000, True), (5203, False)])
def test_a_chart_beyond_the_page_cap_reaches_its_oldest_iga_and_says_when_it_is_cut(n, complete):
    """Issue 16 item 4: the newest-results search pages to the cap (10 x 500); past it, the search is
    cut short and Observations are not proven complete, and the labs search still brings the IgA."""
    from cds_service.invocation import hook_input
    from hooks.services import SERVICES
    body, resources = big_chart(n)
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                      "CDS_LOG_LEVEL": "ERROR", "CDS_ALLOW_PRIVATE_FHIR_SERVERS": True})  # a server on 127.0.0.1
    with FaultFHIR(resources) as server:
        body["fhirServer"] = server.base("ok")
        body["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                     "scope": "patient/*.read", "subject": "mg-cds"}
        resp = app.test_client().post("/cds-services/mg-order-select", json=body)
        assert resp.status_code == 200 and resp.get_json()["cards"] == []  # the IgA was read: no IgA card
        pages = [p for p in server.paths if "/Observation?" in p and "code=" not in p]
        assert len(pages) == 10
        service = SERVICES[0]
        hook_in, _ = hook_input(body, service, app.config)
    assert hook_in.incomplete == (frozenset() if complete else {"Observation"})
    assert sorted(hook_in.fetched_keys) == ["allergies", "labs", "observations"]
    assert "IgA: 250 mg/dL" in service.explain(hook_in)["labs_last_12_months"]["iga"]


@pytest.mark.parametrize("total, link", [
    ("5203", None), (True, None), (-1, None), (10 ** 30, None), (None, "next"), (None, [None, 3, "x"]),
    (None, [{"relation": ["next"], "url": {"a": 1}}]), (None, [{"relation": "next", "url": 7}]),
])
def test_search_paging_elements_of_any_shape_never_fail(client, total, link):
    body = load_json(SCENARIOS / "ivig-no-iga" / "request.json")
    observations = body["prefetch"]["observations"]
    if total is not None:
        observations["total"] = total
    if link is not None:
        observations["link"] = link
    body["prefetch"]["item1"] = {"resourceType": ["Bundle"], "entry": [{"resource": {"resourceType": {"x": 1}}}]}
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 200
    assert "ivig-iga-unknown" in {c["source"]["topic"]["code"] for c in resp.get_json()["cards"]}


# ------------------------------------------------------------------ fhirServer and patientId that would steer the fetch
@pytest.mark.parametrize("url", ["https://[::1", "https://[::1]:99999/", "https://ehr.example:abc/", "https://ehr.example:-1/",
                                 "ftp://ehr.example/fhir", "https:///fhir", "ehr.example/fhir"])
def test_a_fhir_server_the_fetch_could_not_parse_is_400(client, url):
    body = scenario_body()
    body["fhirServer"] = url
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400, resp.get_json()
    issue = resp.get_json()["issue"][0]
    assert issue["details"]["text"] == "fhirServer must be an absolute http(s) URL" and issue["expression"] == ["fhirServer"]


@pytest.mark.parametrize("url", ["https://" + "a" * 64 + ".invalid/", "https://a..b.invalid/"])
def test_a_fhir_server_whose_host_name_cannot_be_encoded_is_400(client, url):
    """A label over 63 characters or an empty one: getaddrinfo's IDNA encoding would raise (a 500)."""
    body = request_without(("patient",), url)
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400, resp.get_json()
    issue = resp.get_json()["issue"][0]
    assert issue["expression"] == ["fhirServer"] and "not a valid host name" in issue["details"]["text"]


@pytest.mark.parametrize("url", ["https://ehr.example/fhir/../admin", "https://ehr.example/fhir/%2e%2e/admin",
                                 "https://ehr.example/fhir\\..\\admin"])
def test_a_fhir_server_with_dot_segments_is_400(client, url):
    body = scenario_body()
    body["fhirServer"] = url
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400 and resp.get_json()["issue"][0]["expression"] == ["fhirServer"]


@pytest.mark.parametrize("patient", ["../../admin", "Patient/../../admin", "1/../../admin", "%2e%2e", "a b", "1?x=y",
                                     "x" * 65, "p1\n", ".", "..", "...", "Patient/..", "Patient/."])
def test_a_patient_id_that_is_not_a_fhir_id_is_400(client, patient):
    """It would be rendered into the fetch's URLs (Patient/{{context.patientId}}) with the bearer token."""
    body = request_without(("patient",), "https://ehr.example/fhir")
    body["context"]["patientId"] = patient
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400, resp.get_json()
    issue = resp.get_json()["issue"][0]
    assert issue["expression"] == ["context.patientId"] and "must be a FHIR id" in issue["details"]["text"]
