"""The Medplum-backed test server itself and the service against it: the server searches (status,
several codes, _include, _sort), pages with link.next, wants the bearer token and its loader
fails loudly; the service follows link.next to a local-coded IgA on the second page, and a
chart of more than 5,000 Observations whose IgA is its oldest result gives the same IgA-based
answer fetched as prefetched."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import requests

from .conftest import SCENARIOS, load_json
from .fhir_server.charts import card_keys, cds_client, chart, heart_rates, with_own_ids, without_prefetch
from .fhir_server.medplum import LoadError, MedplumServer, medplum  # noqa: F401  (medplum is a fixture)

LARGE = 5_203


@pytest.fixture(scope="module")
def paged_patient(medplum: MedplumServer) -> str:  # noqa: F811
    """A patient with 7 heart rates, one a day from 1 Nov 2026."""
    medplum.put_all([{"resourceType": "Patient", "id": "paging-pt"}])
    medplum.put_all(heart_rates("paging-pt", 7, datetime(2026, 11, 1, tzinfo=timezone.utc), timedelta(days=1)))
    return "paging-pt"


def test_server_pages_with_link_next(medplum, paged_patient):  # noqa: F811
    url = f"Observation?patient={paged_patient}&_sort=-date&_count=3"
    ids, pages, total = [], 0, None
    while url:
        page = medplum.get(url)
        assert page["resourceType"] == "Bundle" and page["type"] == "searchset"
        total = page["total"]
        ids += [e["resource"]["id"] for e in page.get("entry", [])]
        pages += 1
        url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
    assert total == 7
    assert pages == 3
    assert ids == [f"{paged_patient}-hr-{i}" for i in range(6, -1, -1)]  # newest first, each once


def test_server_search_sees_a_write_made_after_it(medplum):  # noqa: F811
    query = "Observation?patient=write-pt&_sort=-date&_count=1"
    medplum.put_all(heart_rates("write-pt", 2, datetime(2026, 11, 1, tzinfo=timezone.utc), timedelta(days=1)))
    assert medplum.get(query)["total"] == 2
    medplum.put_all(heart_rates("write-pt", 3, datetime(2026, 11, 1, tzinfo=timezone.utc), timedelta(days=1)))
    page = medplum.get(query)
    assert page["total"] == 3 and page["entry"][0]["resource"]["id"] == "write-pt-hr-2"


def test_server_needs_the_token_and_the_service_sends_it(medplum, paged_patient):  # noqa: F811
    """Without fhirAuthorization's token the server answers 401, so every test that fetches from it
    shows that the service sends the token; with a wrong one the service cannot read the chart (412)."""
    assert requests.get(f"{medplum.base}/Patient/{paged_patient}", timeout=10).status_code == 401
    assert requests.get(f"{medplum.base}/metadata", timeout=10).status_code == 200
    body = with_own_ids(load_json(SCENARIOS / "ivig-all-clear" / "request.json"), "token-")
    medplum.put_all(chart(body))
    client = cds_client(medplum.base)
    wrong = client.post("/cds-services/mg-order-select", json=without_prefetch(body, medplum.base, "wrong-token"))
    assert wrong.status_code == 412
    right = client.post("/cds-services/mg-order-select", json=without_prefetch(body, medplum.base, medplum.token))
    assert right.status_code == 200


def iga_chart(medplum: MedplumServer, prefix: str, vitals: int, iga_coding: dict | None = None) -> dict:  # noqa: F811
    """ivig-iga-deficient-g-per-l (IgA 0.05 g/L on 26 Sep 2026: a critical card), loaded under
    ``prefix`` with ``vitals`` heart rates every 15 minutes after the IgA, so that the IgA is the
    chart's oldest result; ``iga_coding`` replaces the IgA's LOINC coding."""
    body = with_own_ids(load_json(SCENARIOS / "ivig-iga-deficient-g-per-l" / "request.json"), prefix)
    patient = body["context"]["patientId"]
    observations = body["prefetch"]["observations"]["entry"]
    iga = next(e["resource"] for e in observations if e["resource"]["code"]["coding"][0]["code"] == "2458-8")
    if iga_coding:
        iga["code"] = {"coding": [iga_coding], "text": iga_coding["display"]}
    first = datetime.fromisoformat(iga["effectiveDateTime"].replace("Z", "+00:00")) + timedelta(hours=1)
    heart = heart_rates(patient, vitals, first, timedelta(minutes=15))
    assert heart[-1]["effectiveDateTime"] < "2026-11-25"
    observations += [{"resource": r} for r in heart]
    medplum.put_all(chart(body))
    return body


def fetched_and_prefetched(medplum: MedplumServer, body: dict) -> tuple[list, list]:  # noqa: F811
    """The cards without prefetch and with it. The in-memory server needs 1-3 s on this 2-core
    machine for a cold search over thousands of Observations (an indexed server takes
    milliseconds), and these tests are about what the fetch reaches, not how fast: so the
    service gets a longer deadline than its 5 s default."""
    client = cds_client(medplum.base, CDS_DEADLINE_SECONDS=20.0, CDS_FHIR_READ_TIMEOUT=15.0)
    expected = card_keys(client.post("/cds-services/mg-order-select", json=body))
    # rules v2: a standard IVIG product in IgA deficiency is a warning (critical only with anti-IgA antibodies)
    assert ("ivig-iga-deficient", "warning") in [(rule, indicator) for rule, indicator, _ in expected]
    fetched = card_keys(client.post("/cds-services/mg-order-select",
                                    json=without_prefetch(body, medplum.base, medplum.token)))
    return fetched, expected


def test_service_pages_to_a_local_coded_iga_beyond_the_first_page(medplum):  # noqa: F811
    """520 heart rates, then an IgA with only a local code and its name: the service's
    Observation search (500 a page) must follow link.next to find it."""
    local = {"system": "urn:mg-cds:test:local-lab-codes", "code": "IGA-S", "display": "IgA, serum"}
    body = iga_chart(medplum, "paged-", 520, local)
    # 520 heart rates and the chart's weight, height, IgA and eGFR
    assert medplum.get(f"Observation?patient={body['context']['patientId']}&_count=1")["total"] == 524
    fetched, expected = fetched_and_prefetched(medplum, body)
    assert fetched == expected


def test_large_chart_without_prefetch_reads_the_oldest_iga(medplum):  # noqa: F811
    body = iga_chart(medplum, "large-", LARGE)
    assert medplum.get(f"Observation?patient={body['context']['patientId']}&_count=1")["total"] > 5_000
    fetched, expected = fetched_and_prefetched(medplum, body)
    assert fetched == expected


@pytest.fixture(scope="module")
def searched_patient(medplum: MedplumServer) -> str:  # noqa: F811
    """A patient with a final and an entered-in-error Observation, two coded labs, and a
    MedicationRequest whose Medication is a separate resource."""
    pid = "search-pt"
    subject = {"reference": f"Patient/{pid}"}

    def obs(oid: str, code: str, status: str = "final") -> dict:
        return {"resourceType": "Observation", "id": oid, "status": status, "subject": subject,
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "effectiveDateTime": "2026-11-01T09:00:00Z"}
    medplum.put_all([
        {"resourceType": "Patient", "id": pid},
        obs("search-iga", "2458-8"), obs("search-hbsag", "5196-1"), obs("search-weight", "29463-7"),
        obs("search-error", "2458-8", "entered-in-error"),
        {"resourceType": "Medication", "id": "search-med", "code": {"text": "Rituximab 10 mg/mL"}},
        {"resourceType": "MedicationRequest", "id": "search-rx", "status": "active", "intent": "order",
         "subject": subject, "medicationReference": {"reference": "Medication/search-med"}},
        {"resourceType": "MedicationRequest", "id": "search-rx-stopped", "status": "stopped", "intent": "order",
         "subject": subject, "medicationReference": {"reference": "Medication/search-med"}},
    ])
    return pid


def _search(medplum: MedplumServer, query: str) -> list[tuple[str, str, str]]:  # noqa: F811
    page = medplum.get(query)
    assert page["resourceType"] == "Bundle", page
    return sorted((e["resource"]["resourceType"], e["resource"]["id"], e["search"]["mode"])
                  for e in page.get("entry", []))


def test_server_filters_by_status_and_several_codes(medplum, searched_patient):  # noqa: F811
    got = _search(medplum, f"Observation?patient={searched_patient}&status=final,amended"
                           "&code=http://loinc.org|2458-8,http://loinc.org|5196-1")
    assert got == [("Observation", "search-hbsag", "match"), ("Observation", "search-iga", "match")]


def test_server_includes_the_referenced_medication(medplum, searched_patient):  # noqa: F811
    got = _search(medplum, f"MedicationRequest?patient={searched_patient}&status=active,on-hold,draft,completed"
                           "&_include=MedicationRequest:medication")
    assert got == [("Medication", "search-med", "include"), ("MedicationRequest", "search-rx", "match")]


def test_loader_fails_loudly_on_a_refused_resource(medplum):  # noqa: F811
    def put(rid: str, url: str) -> dict:
        return {"resource": {"resourceType": "Patient", "id": rid}, "request": {"method": "PUT", "url": url}}
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [put("load-ok", "Patient/load-ok"), put("load-a", "Patient/load-b")]}
    with pytest.raises(LoadError, match="1 of 2 resources were not stored: Patient/load-b: 400 Incorrect resource ID"):
        medplum.load_bundle(bundle)
