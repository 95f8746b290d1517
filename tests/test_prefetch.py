"""Prefetch completion: templates, FHIR fallback fetch with responses-mocked
HTTP, null keys, 412 for required data, degraded answers, paging."""
from __future__ import annotations

import json
import re

import pytest
import requests
import responses

from cds_service import create_app
from cds_service.decode import decode_body
from cds_service.invocation import hook_input
from cds_service.pool import ResourcePool
from cds_service.prefetch import TemplateError, render, template_values
from hooks.knowledge import load
from hooks.services import PREFETCH, SERVICES, labs_query

from .conftest import SCENARIOS, load_json

BASE = "https://fhir.example.org/r4"
AUTH = {"access_token": "secret-token", "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
        "subject": "mg-cds"}


@pytest.fixture
def config(config):
    """The mocked server is a public name that does not resolve here: allowlisted (cds_service/egress.py)."""
    return {**config, "CDS_ALLOWED_FHIR_SERVERS": BASE}


def cards(resp) -> dict[str, str]:
    assert resp.status_code == 200, resp.get_json()
    return {c["source"]["topic"]["code"]: c["indicator"] for c in resp.get_json()["cards"]}


def with_server(name: str, *drop: str) -> tuple[dict, dict]:
    """A scenario's request with fhirServer, as a client that prefetched every key but ``drop``
    would send it (the scenarios predate the ``allergies`` key: it is sent empty)."""
    body = load_json(SCENARIOS / name / "request.json")
    body["prefetch"].setdefault("allergies", {"resourceType": "Bundle", "type": "searchset", "entry": []})
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
    keys = list(load_json(SCENARIOS / "pv-crisis-grade4" / "request.json")["prefetch"])
    body, original = with_server("pv-crisis-grade4", *keys, "allergies")
    responses.get(f"{BASE}/Patient/mg-pt-1", json=original["patient"])
    for key, rtype in (("conditions", "Condition"), ("observations", "Observation"), ("medications", "MedicationRequest"),
                       ("administrations", "MedicationAdministration"), ("procedures", "Procedure"),
                       ("serviceRequests", "ServiceRequest"), ("allergies", "AllergyIntolerance")):
        responses.get(f"{BASE}/{rtype}", json=original[key])
    assert cards(client.post("/cds-services/mg-patient-view", json=body))["mg-severe-management"] == "critical"
    assert len(responses.calls) == 9  # the eight searches (observations and labs both Observation) and the read
    urls = [c.request.url for c in responses.calls]
    assert sum("/Observation?" in u and "code=" in u for u in urls) == 1  # labs: filtered by the rules' codes


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
    assert len(responses.calls) == 6  # three pages each of observations and labs (both absent: both fetched)


@responses.activate
def test_pagination_is_capped_and_loops_stop():
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_FHIR_MAX_PAGES": 3,
                      "CDS_ALLOWED_FHIR_SERVERS": BASE})
    body, _ = with_server("ivig-no-iga", "observations")
    counter = {"n": 0}

    def endless(request):
        counter["n"] += 1
        return 200, {}, json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": [],
                                    "link": [{"relation": "next", "url": f"{BASE}/Observation?page={counter['n'] + 1}"}]})
    responses.add_callback(responses.GET, re.compile(f"{re.escape(BASE)}/Observation.*"), callback=endless)
    assert app.test_client().post("/cds-services/mg-order-select", json=body).status_code == 200
    assert counter["n"] == 6  # the page cap, for observations and for labs

    responses.reset()
    loop = {"resourceType": "Bundle", "type": "searchset", "entry": [],
            "link": [{"relation": "next", "url": f"{BASE}/Observation?page=1"}]}
    responses.get(re.compile(f"{re.escape(BASE)}/Observation.*"), json=loop)
    assert app.test_client().post("/cds-services/mg-order-select", json=body).status_code == 200
    assert len(responses.calls) == 4  # for each search, the first page and its self-referencing next, then stop


@responses.activate
def test_next_link_to_another_server_is_not_followed(client):
    body, _ = with_server("ivig-no-iga", "observations")
    responses.get(f"{BASE}/Observation", json={"resourceType": "Bundle", "type": "searchset", "entry": [],
                                              "link": [{"relation": "next", "url": "http://169.254.169.254/latest"}]})
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200
    assert len(responses.calls) == 2  # observations and labs, one page each


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


# --- what arrived is judged by type, whatever key it came under (issue 16 items 0, 3, 4, 8)

def _hook_input(app, body: dict, config: dict | None = None):
    """(service, HookInput) for a request body, as the invoke route builds it."""
    service = next(s for s in SERVICES if s.hook == body["hook"])
    hook_in, _ = hook_input(body, service, config or app.config)
    return service, hook_in


def scenario_body(name: str) -> dict:
    return load_json(SCENARIOS / name / "request.json")


EPIC_NO_RESULTS = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": [
    {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing",
                                                                "diagnostics": "Resource request returns no results."}]},
     "search": {"mode": "outcome"}}]}


@pytest.mark.parametrize("shape", ["medication-entry", "reference-display"])
@pytest.mark.parametrize("decoded", ["typed", "plain"])
def test_epic_empty_search_does_not_drop_the_drafted_order(app, shape, decoded):
    """Item 0: the medications prefetch is Epic's empty search (only an OperationOutcome, which has
    no id); the drafted rituximab, named by reference, is still read and gives its cards."""
    body = scenario_body(f"fidelity-prefetch-epic-empty-search-{shape}")
    assert body["prefetch"]["medications"]["entry"][0]["resource"]["resourceType"] == "OperationOutcome"
    service = SERVICES[0]
    raw = json.dumps(body).encode()
    decoder = service.decoder if decoded == "typed" else None
    hook_in, _ = hook_input(decode_body(raw, decoder), service, app.config)
    fired = {c.rule_id for c in service.evaluate(hook_in).cards}
    assert {"rituximab-screening-incomplete", "rituximab-safety"} <= fired
    notes = service.explain(hook_in)["data_quality"]
    assert not any("could not be read" in n for n in notes)
    by_display = any("not found; read its display" in n for n in notes)
    assert by_display == (shape == "reference-display")  # the separate Medication entry is read by its code


def test_pool_resolves_past_a_typed_search_outcome():
    body = scenario_body("fidelity-prefetch-epic-empty-search-reference-display")
    decoded = decode_body(json.dumps(body).encode(), SERVICES[0].decoder)
    assert type(decoded["prefetch"]["medications"]).__name__ != "dict"  # decoded typed
    pool = ResourcePool()
    pool.add_all(decoded["prefetch"].items())
    assert pool.resolve("Medication/med-rtx") is None  # no exception from the id-less OperationOutcome
    assert pool.resolve("Patient/mg-pt-1")["id"] == "mg-pt-1"
    assert pool.resolve(None) is None


def only_foreign_keys() -> dict:
    """The foreign-keys scenario with every key the client's own (item1..item6, PDDI-CDS)."""
    body = scenario_body("fidelity-prefetch-foreign-keys")
    body["prefetch"]["item6"] = body["prefetch"].pop("conditions")
    return body


@pytest.mark.parametrize("keys", ["some", "all"])
def test_prefetch_under_the_clients_own_keys_is_read_by_type(client, app, keys):
    """Item 3: item1..item6 (the patient in a Bundle) and no fhirServer: no 412, the cards of the
    same data under our keys, and explain says which keys held what, and that the types are not
    proven complete."""
    body = only_foreign_keys() if keys == "all" else scenario_body("fidelity-prefetch-foreign-keys")
    assert "fhirServer" not in body and ("conditions" in body["prefetch"]) == (keys == "some")
    assert cards(client.post("/cds-services/mg-order-select", json=body)) == {"ivig-dose-check": "warning"}
    service, hook_in = _hook_input(app, body)
    summary = service.explain(hook_in)["prefetch"]
    assert summary["keys"]["item1"] == {"Patient": 1}
    assert summary["keys"]["item2"] == {"Observation": 4}  # weight, height, IgA, eGFR
    assert summary["keys"]["conditions" if keys == "some" else "item6"] == {"Condition": 1}
    assert ("Condition" in hook_in.incomplete) == (keys == "all")
    assert "Observation" in hook_in.incomplete and "item2" in summary["incomplete"]["Observation"]
    assert "Patient" not in hook_in.incomplete  # a read: the patient resource is all there is
    assert "medications" in hook_in.unavailable  # no MedicationRequest under any key: nothing to read
    assert "conditions" not in hook_in.unavailable and "observations" not in hook_in.unavailable


def test_own_complete_keys_prove_their_types(app):
    body = scenario_body("ivig-all-clear")
    _, hook_in = _hook_input(app, body)
    assert hook_in.incomplete == frozenset()
    assert "labs" not in hook_in.unavailable  # the full observations search holds what labs would


def test_no_conditions_under_any_key_is_still_412(client):
    body = only_foreign_keys()
    del body["prefetch"]["item6"]
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412 and "'conditions'" in resp.get_json()["issue"][0]["details"]["text"]


def test_patient_anywhere_satisfies_the_read_and_nowhere_is_412(client):
    body = only_foreign_keys()
    patient = body["prefetch"].pop("item1")["entry"][0]["resource"]
    body["prefetch"]["item2"]["entry"].append({"resource": patient})
    assert cards(client.post("/cds-services/mg-order-select", json=body)) == {"ivig-dose-check": "warning"}
    body["prefetch"]["item2"]["entry"].pop()
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412 and "'patient'" in resp.get_json()["issue"][0]["details"]["text"]


@pytest.mark.parametrize("cut", ["total", "next"])
def test_a_prefetched_search_cut_short_leaves_its_type_incomplete(app, cut):
    """Item 4b: a Bundle whose total exceeds what arrived, or with a next page not read."""
    body = scenario_body("ivig-no-iga")
    observations = body["prefetch"]["observations"]
    if cut == "total":
        observations["total"] = len(observations["entry"]) + 1
    else:
        observations["link"] = [{"relation": "next", "url": "https://ehr.example.org/fhir/Observation?page=2"}]
    _, hook_in = _hook_input(app, body)
    assert hook_in.incomplete == {"Observation"}
    assert "observations" in hook_in.incomplete_types["Observation"]
    assert any("Observation data may be incomplete" in n for n in hook_in.notes)


def test_total_counts_only_the_searched_type(app):
    """An _include'd Medication or an OperationOutcome entry is not a match."""
    body = scenario_body("ivig-no-iga")
    observations = body["prefetch"]["observations"]
    observations["total"] = len(observations["entry"])
    observations["entry"].append(EPIC_NO_RESULTS["entry"][0])
    _, hook_in = _hook_input(app, body)
    assert hook_in.incomplete == frozenset()
    observations["total"] += 1
    assert _hook_input(app, body)[1].incomplete == {"Observation"}


def test_labs_alone_show_results_but_prove_nothing_absent(app):
    """The code-filtered labs search holds only part of the Observations: without the full search
    its type is incomplete (not unavailable: the lab results it holds are read)."""
    body = scenario_body("ivig-all-clear")
    body["prefetch"]["labs"] = body["prefetch"].pop("observations")
    _, hook_in = _hook_input(app, body)
    assert hook_in.incomplete == {"Observation"} and "observations" not in hook_in.unavailable
    assert "'observations' not prefetched" in hook_in.incomplete_types["Observation"]


def test_old_iga_reached_through_labs_although_the_recent_search_is_cut_short(app):
    body = scenario_body("fidelity-prefetch-labs-reach-old-iga")
    assert body["prefetch"]["observations"]["total"] == 5203
    service, hook_in = _hook_input(app, body)
    assert service.evaluate(hook_in).cards == []
    assert hook_in.incomplete == {"Observation"}  # labs complete does not make all Observations complete


def test_labs_template_holds_every_loinc_code_the_lab_value_sets_list_in_a_sane_url():
    """Item 4a: every LOINC code of the lab and body-size value sets is in the labs search, and its
    URL stays well under the 2,000 characters every server and proxy accepts."""
    codes = {c for vid, vs in load().valuesets.items() if vid.startswith(("lab-", "vital-"))
             for s, c in vs.codes if s == "http://loinc.org"}
    assert codes
    many = sorted(codes) + [f"{90000 + i}-{i % 10}" for i in range(80)]  # value sets that grew a lot
    for template, listed in ((PREFETCH["labs"], codes), (labs_query(many), many)):
        tokens = set(re.search(r"&code=([^&]+)", template).group(1).split(","))
        assert {t.rpartition("|")[2] for t in tokens} == set(listed)
        assert all(t.startswith("http://loinc.org|") for t in tokens) or not any("|" in t for t in tokens)
        url = requests.Request("GET", f"https://fhir.example-ehr.org/api/FHIR/R4/"
                                      f"{template.replace('{{context.patientId}}', 'e' * 64)}").prepare().url
        assert len(url) < 2000, len(url)
    assert re.search(r"[=,](http://loinc\.org\|)?2458-8[,&]", PREFETCH["labs"])  # serum IgA is reachable
    assert PREFETCH["allergies"].startswith("AllergyIntolerance?patient={{context.patientId}}")


@responses.activate
def test_labs_fetched_when_the_recent_search_is_cut_short(client, app):
    body, original = with_server("ivig-all-clear")
    iga = next(e for e in original["observations"]["entry"] if e["resource"]["code"]["coding"][0]["code"] == "2458-8")
    body["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset", "total": 900,
                                        "entry": [e for e in original["observations"]["entry"] if e is not iga]}
    responses.get(f"{BASE}/Observation", json={"resourceType": "Bundle", "type": "searchset", "total": 1,
                                              "entry": [iga]})
    assert cards(client.post("/cds-services/mg-order-select", json=body)) == {}  # the IgA came with labs
    assert len(responses.calls) == 1 and "2458-8" in responses.calls[0].request.url
    _, hook_in = _hook_input(app, body)
    assert hook_in.fetched_keys == ["labs"] and hook_in.incomplete == {"Observation"}


@responses.activate
def test_labs_not_fetched_when_the_full_search_arrived_complete(client):
    body, _ = with_server("ivig-all-clear")
    assert "labs" not in body["prefetch"]
    assert cards(client.post("/cds-services/mg-order-select", json=body)) == {}
    assert len(responses.calls) == 0


@responses.activate
def test_fetched_search_complete_or_cut_short(app):
    """A fetched search proves its type complete only when every page was read."""
    cfg = dict(app.config, CDS_FHIR_MAX_PAGES=2)
    body, original = with_server("ivig-no-iga", "observations")
    entries = original["observations"]["entry"]

    def pages(n_pages):
        def page(request):
            n = int(re.search(r"page=(\d+)", request.url).group(1)) if "page=" in request.url else 1
            bundle = {"resourceType": "Bundle", "type": "searchset", "entry": entries if n == 1 else []}
            if n < n_pages:
                bundle["link"] = [{"relation": "next", "url": f"{BASE}/Observation?page={n + 1}"}]
            return 200, {}, json.dumps(bundle)
        return page
    for n_pages, incomplete in ((2, set()), (3, {"Observation"})):
        responses.reset()
        responses.add_callback(responses.GET, re.compile(f"{re.escape(BASE)}/Observation.*"), callback=pages(n_pages))
        _, hook_in = _hook_input(app, json.loads(json.dumps(body)), cfg)
        assert hook_in.incomplete == incomplete, n_pages
        assert sorted(hook_in.fetched_keys) == ["labs", "observations"]


@responses.activate
def test_allergies_are_fetched_like_the_others(client):
    body, _ = with_server("ivig-all-clear", "allergies")
    allergy = {"resourceType": "AllergyIntolerance", "id": "a1", "patient": {"reference": "Patient/mg-pt-1"},
               "code": {"text": "Immune globulin"}, "criticality": "high"}
    responses.get(f"{BASE}/AllergyIntolerance", json={"resourceType": "Bundle", "type": "searchset",
                                                     "entry": [{"resource": allergy}]})
    assert client.post("/cds-services/mg-order-select", json=body).status_code == 200
    assert len(responses.calls) == 1 and "patient=mg-pt-1" in responses.calls[0].request.url


# --- item 8: a drafted order's Medication read from fhirServer when it resolves nowhere

def _display_only(body: dict, display: bool = False) -> dict:
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    assert order["medicationReference"]["reference"] == "Medication/med-rtx"
    if not display:
        order["medicationReference"].pop("display", None)
    body["fhirServer"], body["fhirAuthorization"] = BASE, AUTH
    return body


@responses.activate
def test_drafted_medication_is_read_from_the_fhir_server(client):
    body = _display_only(scenario_body("fidelity-prefetch-epic-empty-search-reference-display"))
    medication = load_json(SCENARIOS / "fidelity-prefetch-draft-medication-entry" / "request.json")[
        "context"]["draftOrders"]["entry"][1]["resource"]
    responses.get(f"{BASE}/Medication/med-rtx", json=medication)
    responses.get(f"{BASE}/AllergyIntolerance", json={"resourceType": "Bundle", "type": "searchset", "entry": []})
    fired = cards(client.post("/cds-services/mg-order-select", json=body))
    assert fired == {"rituximab-screening-incomplete": "warning", "rituximab-safety": "info"}
    assert [c.request.url for c in responses.calls if "/Medication/" in c.request.url] == [f"{BASE}/Medication/med-rtx"]
    assert responses.calls[0].request.headers["Authorization"] == "Bearer secret-token"


@responses.activate
def test_drafted_medication_not_found_falls_back_to_the_display(client, app):
    body = _display_only(scenario_body("fidelity-prefetch-epic-empty-search-reference-display"), display=True)
    responses.get(f"{BASE}/Medication/med-rtx", status=404, json={"resourceType": "OperationOutcome"})
    responses.get(f"{BASE}/AllergyIntolerance", json={"resourceType": "Bundle", "type": "searchset", "entry": []})
    assert cards(client.post("/cds-services/mg-order-select", json=body))["rituximab-screening-incomplete"] == "warning"
    service, hook_in = _hook_input(app, json.loads(json.dumps(body)))
    notes = service.explain(hook_in)["data_quality"]
    assert any("Medication/med-rtx (a drafted order's medication) could not be read" in n and "404" in n for n in notes)
    assert any("read its display" in n for n in notes)


@responses.activate
def test_drafted_medication_in_draft_orders_is_not_fetched(client):
    body = scenario_body("fidelity-prefetch-draft-medication-entry")
    body["fhirServer"], body["fhirAuthorization"] = BASE, AUTH
    body["prefetch"]["allergies"] = None
    assert cards(client.post("/cds-services/mg-order-select", json=body))["rituximab-screening-incomplete"] == "warning"
    assert len(responses.calls) == 0


# --- a concept is missing only when a complete search that would hold it arrived (rules.md v2, Labs)

def _lab_status(app, body: dict, concept: str = "iga") -> str:
    from hooks.services import patient_state
    _, hook_in = _hook_input(app, body)
    return patient_state(hook_in).lab_ever(concept).status


def test_no_iga_in_a_complete_search_is_missing(app):
    assert _lab_status(app, scenario_body("ivig-no-iga")) == "missing"


def test_no_iga_in_a_search_cut_short_is_unknown_and_said_so(app, client):
    body = scenario_body("fidelity-prefetch-truncated-observations-iga-unknown")
    assert _lab_status(app, body) == "unknown"
    service, hook_in = _hook_input(app, body)
    assert "may be incomplete" in service.explain(hook_in)["labs_last_12_months"]["iga"]


def test_no_iga_under_foreign_keys_only_is_unknown(app):
    body = only_foreign_keys()
    for entry in list(body["prefetch"]["item2"]["entry"]):
        if entry["resource"]["code"]["coding"][0]["code"] == "2458-8":
            body["prefetch"]["item2"]["entry"].remove(entry)
    assert _lab_status(app, body) == "unknown"


def test_the_result_a_cut_short_search_holds_is_still_a_result(app):
    body = scenario_body("fidelity-prefetch-labs-reach-old-iga")
    assert _lab_status(app, body) == "result"


@responses.activate
def test_a_prefetched_page_with_a_next_link_is_read_to_the_end_from_the_fhir_server(client, app):
    """rules.md: Bundles with link.next: following pages fetched when a FHIR server is reachable."""
    body, original = with_server("ivig-all-clear")
    entries = original["observations"]["entry"]
    iga = next(e for e in entries if e["resource"]["code"]["coding"][0]["code"] == "2458-8")
    body["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset", "total": len(entries),
                                        "entry": [e for e in entries if e is not iga],
                                        "link": [{"relation": "next", "url": f"{BASE}/Observation?page=2"}]}
    responses.get(f"{BASE}/Observation?page=2", json={"resourceType": "Bundle", "type": "searchset", "entry": [iga]})
    responses.get(re.compile(f"{re.escape(BASE)}/Observation\\?patient=.*"),
                  json={"resourceType": "Bundle", "type": "searchset", "entry": []})  # labs: nothing more
    assert cards(client.post("/cds-services/mg-order-select", json=body)) == {}  # the IgA of page 2 was read
    _, hook_in = _hook_input(app, json.loads(json.dumps(body)))
    assert hook_in.incomplete == frozenset() and "observations.next" in hook_in.fetched_keys
    assert any(c.request.url == f"{BASE}/Observation?page=2" for c in responses.calls)
    assert all(c.request.headers["Authorization"] == "Bearer secret-token" for c in responses.calls)


@responses.activate
def test_a_prefetched_next_link_to_another_server_is_not_followed(app):
    body, _ = with_server("ivig-no-iga")
    body["prefetch"]["observations"]["link"] = [{"relation": "next", "url": "http://169.254.169.254/latest"}]
    responses.get(re.compile(f"{re.escape(BASE)}/Observation\\?patient=.*"),
                  json={"resourceType": "Bundle", "type": "searchset", "entry": []})
    _, hook_in = _hook_input(app, body)
    assert hook_in.incomplete == {"Observation"}
    assert all(c.request.url.startswith(BASE) for c in responses.calls)


@pytest.mark.parametrize("code, quiet", [("121191", False), ("617993", True)])
def test_a_draft_named_by_reference_is_judged_by_its_draft_medication(app, code, quiet):
    """The chart-free check for unrelated orders reads the Medication a draft points to in draftOrders:
    rituximab is evaluated with the chart, amoxicillin stays quiet without reading it."""
    from hooks import services
    body = scenario_body("fidelity-prefetch-draft-medication-entry")
    medication = body["context"]["draftOrders"]["entry"][1]["resource"]
    medication["code"] = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": code}]}
    _, hook_in = _hook_input(app, body)
    assert services._quiet_order(hook_in) == quiet
    del body["context"]["draftOrders"]["entry"][1]  # the Medication sent nowhere, no display: read with the chart
    _, hook_in = _hook_input(app, body)
    assert services._quiet_order(hook_in) is False
