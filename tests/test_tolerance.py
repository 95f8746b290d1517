"""Validate what you use, tolerate what you don't (issue 17, item 4).

Real requests from other projects (tests/external/, each with its origin in the README there)
are posted to the service whose hook they name. Every one is accepted: 200 when the patient's
data can be had (here from a stub FHIR server answering the fallback fetch), 412 naming the
missing keys when it cannot (the request's fhirServer not reachable), never a 400 over a field no
rule reads. Requests for hooks we do not serve are refused by every service with a 400 saying
which hook the request names and which the service answers. The tolerated deviations are logged (the field, never
its value) and counted; what the service needs stays a 400."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
import requests
from requests.adapters import BaseAdapter

from cds_service import create_app, egress, logs, metrics
from cds_service.request import TOLERATED, parse_request
from tests.conftest import NOW, SCENARIOS, load_json

EXTERNAL = Path(__file__).resolve().parent / "external"
EXPECTED: dict[str, dict] = load_json(EXTERNAL / "expected.json")
SERVED = {"patient-view": "mg-patient-view", "order-select": "mg-order-select", "order-sign": "mg-order-sign"}
SERVED_FILES = sorted(f for f, e in EXPECTED.items() if e["hook"] in SERVED)
OTHER_FILES = sorted(f for f, e in EXPECTED.items() if e["hook"] not in SERVED)
UNREACHABLE = "https://fhir.invalid"  # an allowlist no request's fhirServer is on: the fetch is refused


def _config(**extra) -> dict:
    return {"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW, "CDS_LOG_LEVEL": "WARNING",
            "CDS_RECORD_CARDS": False, **extra}


def _outcome_text(resp) -> str:
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["details"]["text"]


class StubFHIR(BaseAdapter):
    """A FHIR server for the fallback fetch, without sockets: a read of Patient/<id> answers that
    Patient, every search an empty searchset, any other read 404. It records what was asked."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, str | None]] = []

    def send(self, request, **kwargs):
        self.calls.append((request.url, request.headers.get("Authorization")))
        path = request.url.split("?")[0].rstrip("/").split("/")
        resp = requests.Response()
        resp.request, resp.url, resp.status_code = request, request.url, 200
        if "?" in request.url:
            body: dict = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
        elif path[-2] == "Patient":
            body = {"resourceType": "Patient", "id": path[-1]}
        else:
            resp.status_code, body = 404, {"resourceType": "OperationOutcome", "issue": []}
        resp.raw = io.BytesIO(json.dumps(body).encode())
        resp.headers["Content-Type"] = "application/fhir+json"
        return resp

    def close(self):
        pass


def _post(client, rel: str):
    raw = (EXTERNAL / rel).read_bytes()
    return client.post(f"/cds-services/{SERVED[EXPECTED[rel]['hook']]}", data=raw, content_type="application/json")


def test_every_external_request_has_an_expectation_and_an_origin():
    files = sorted(str(p.relative_to(EXTERNAL)) for p in EXTERNAL.glob("*/*.json")
                   if "hook" in load_json(p))
    assert files == sorted(EXPECTED)
    readme = (EXTERNAL / "README.md").read_text(encoding="utf-8")
    for rel in files:
        assert Path(rel).name in readme, f"{rel} has no origin line in tests/external/README.md"
    assert len({rel.split("/")[0] for rel in files}) >= 7


@pytest.fixture(scope="module")
def unreachable_client():
    return create_app(_config(CDS_ALLOWED_FHIR_SERVERS=UNREACHABLE)).test_client()


@pytest.mark.parametrize("rel", SERVED_FILES)
def test_external_request_as_sent(unreachable_client, rel):
    """As sent, with its fhirServer out of reach: 200 when its prefetch holds what the service
    needs, else 412 naming exactly the keys that could not be had; a 400 only where the request
    is wrong in a way that matters (recorded with its reason in expected.json)."""
    expected = EXPECTED[rel]
    resp = _post(unreachable_client, rel)
    assert resp.status_code == expected["status"], resp.get_data(as_text=True)[:300]
    if resp.status_code == 200:
        assert isinstance(resp.get_json()["cards"], list)
    elif resp.status_code == 412:
        text = _outcome_text(resp)
        assert "could be neither prefetched nor fetched" in text
        for key in ("patient", "conditions"):
            assert (f"'{key}':" in text) == (key in expected["unavailable"]), text
    else:
        assert _outcome_text(resp) == expected["error"]


@pytest.mark.parametrize("rel", [f for f in SERVED_FILES if EXPECTED[f]["status"] != 400])
def test_external_request_gets_200_when_its_data_can_be_had(rel):
    """The same request with its fhirServer answering (a stub: the patient, empty searches): 200.
    The fallback fetch sends the request's access token as a Bearer token."""
    body = load_json(EXTERNAL / rel)
    app = create_app(_config(CDS_ALLOWED_FHIR_SERVERS=body["fhirServer"]))
    stub = StubFHIR()
    session = egress.session(egress.policy(app.config))  # the fallback fetch's own session (cds_service.egress)
    session.mount("http://", stub)
    session.mount("https://", stub)
    try:
        resp = _post(app.test_client(), rel)
    finally:
        egress.session.cache_clear()  # the stub stays with this test
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert resp.get_json()["cards"] == []  # none of these patients has myasthenia gravis
    token = (body.get("fhirAuthorization") or {}).get("access_token")
    assert stub.calls and all(auth == (f"Bearer {token}" if token else None) for _, auth in stub.calls)


@pytest.mark.parametrize("rel", OTHER_FILES)
def test_external_request_for_a_hook_we_do_not_serve(unreachable_client, rel):
    """Refused by every service with a 400 naming its hook (tests/external/README.md counts them)."""
    raw = (EXTERNAL / rel).read_bytes()
    for hook, service_id in SERVED.items():
        resp = unreachable_client.post(f"/cds-services/{service_id}", data=raw, content_type="application/json")
        assert resp.status_code == 400
        assert _outcome_text(resp) == f"hook '{EXPECTED[rel]['hook']}' does not match this service, which answers '{hook}'"


@pytest.mark.parametrize("rel", [f for f in SERVED_FILES if EXPECTED[f]["status"] != 400])
def test_external_request_shows_the_deviations_listed(rel):
    body = load_json(EXTERNAL / rel)
    assert parse_request(body, body["hook"]).deviations == EXPECTED[rel]["deviations"]


# ------------------------------------------------------------------ each tolerated deviation, one at a time
def _scenario() -> dict:
    return load_json(SCENARIOS / "ivig-no-iga" / "request.json")


def _with_auth(**fields) -> dict:
    body = _scenario()
    body["fhirServer"] = "https://fhir.example.org/r4"
    body["fhirAuthorization"] = {"access_token": "secret-token-value", "token_type": "Bearer", "expires_in": 300,
                                 "scope": "patient/*.read", "subject": "mg-cds", **fields}
    body["fhirAuthorization"] = {k: v for k, v in body["fhirAuthorization"].items() if v is not DROP}
    return body


DROP = object()
CASES = [
    ("context.userId:missing", lambda b: b["context"].pop("userId")),
    ("context.userId:invalid", lambda b: b["context"].update(userId="")),
    ("context.userId:invalid", lambda b: b["context"].update(userId=42)),
    ("context.patientId:reference", lambda b: b["context"].update(patientId="Patient/" + b["context"]["patientId"])),
]
AUTH_CASES = [
    ("fhirAuthorization.scope:empty", {"scope": ""}),
    ("fhirAuthorization.scope:missing", {"scope": DROP}),
    ("fhirAuthorization.scope:invalid", {"scope": ["patient/*.read"]}),
    ("fhirAuthorization.subject:missing", {"subject": DROP}),
    ("fhirAuthorization.subject:empty", {"subject": " "}),
    ("fhirAuthorization.subject:invalid", {"subject": 7}),
    ("fhirAuthorization.expires_in:missing", {"expires_in": DROP}),
    ("fhirAuthorization.expires_in:invalid", {"expires_in": "300"}),
    ("fhirAuthorization.token_type:case", {"token_type": "bearer"}),
    ("fhirAuthorization.token_type:missing", {"token_type": DROP}),
]


def _metric(deviation: str) -> float:
    return metrics.TOLERATED_DEVIATIONS.labels(deviation)._value.get()


def _no_uuids(value):
    """Cards with every uuid (card and suggestion) blanked: new on each call."""
    return json.loads(json.dumps(value), object_hook=lambda o: {k: ("-" if k == "uuid" else v) for k, v in o.items()})


def _body_for(deviation: str, change) -> dict:
    if isinstance(change, dict):
        return _with_auth(**change)
    body = _scenario()
    change(body)
    return body


@pytest.mark.parametrize("deviation,change", CASES + AUTH_CASES, ids=[c[0] for c in CASES + AUTH_CASES])
def test_tolerated_deviation_answers_as_the_spec_request_does_and_is_logged_and_counted(deviation, change):
    app = create_app(_config(CDS_ALLOWED_FHIR_SERVERS=UNREACHABLE, CDS_LOG_LEVEL="INFO"))
    client = app.test_client()
    clean = client.post("/cds-services/mg-order-select", json=_with_auth() if isinstance(change, dict) else _scenario())
    before = _metric(deviation)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JSONFormatter())
    logs.get_logger().addHandler(handler)
    try:
        resp = client.post("/cds-services/mg-order-select", json=_body_for(deviation, change))
    finally:
        logs.get_logger().removeHandler(handler)
    assert resp.status_code == clean.status_code == 200
    assert _no_uuids(resp.get_json()["cards"]) == _no_uuids(clean.get_json()["cards"]) != []
    assert _metric(deviation) == before + 1
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    noted = [e for e in events if e["event"] == "tolerated_deviation"]
    assert [e["deviation"] for e in noted] == [deviation]
    assert noted[0]["hook"] == "order-select" and noted[0]["hook_instance"]
    assert noted[0]["request_id"] == resp.headers["X-Request-ID"]
    text = stream.getvalue()
    assert "secret-token-value" not in text and "mg-pt" not in text  # no token, no patient id


def test_every_tolerated_deviation_is_tested_and_documented():
    tested = {d for d, _ in CASES + AUTH_CASES} | {"prefetch.pre-1.0-entry"}
    assert tested == set(TOLERATED)
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n### Tolerated deviations\n", 1)[1].split("\n### ", 1)[0]
    for deviation in TOLERATED:
        assert f"`{deviation}`" in section, deviation


def test_a_request_without_deviations_reports_none():
    assert parse_request(_scenario(), "order-select").deviations == []


def test_pre_1_0_prefetch_entry_is_read_as_its_resource_and_a_failed_one_as_absent():
    body = _scenario()
    patient = body["prefetch"]["patient"]
    body["prefetch"]["patient"] = {"response": {"status": "200 OK"}, "resource": patient}
    body["prefetch"]["allergies"] = {"response": {"status": "404 Not Found"}, "resource": {"resourceType": "X"}}
    req = parse_request(body, "order-select")
    assert req.deviations == ["prefetch.pre-1.0-entry"]
    assert req.prefetch["patient"] is patient
    assert "allergies" not in req.prefetch  # absent: fetched when it can be, never read as "no data"


def test_patient_reference_is_read_as_the_id_everywhere():
    body = _scenario()
    pid = body["context"]["patientId"]
    body["context"]["patientId"] = f"Patient/{pid}"
    req = parse_request(body, "order-select")
    assert req.patient_id == pid and req.context["patientId"] == pid
    assert body["context"]["patientId"] == f"Patient/{pid}"  # the request body itself is not changed


# ------------------------------------------------------------------ what is used stays a 400
NOT_AN_ID = "context.patientId must be a FHIR id (1 to 64 letters, digits, '-' or '.') or 'Patient/' and one"


@pytest.mark.parametrize("change,expected", [
    (lambda b: b["context"].update(patientId=""), "context.patientId must not be empty"),
    (lambda b: b["context"].update(patientId="Patient/"), NOT_AN_ID),
    (lambda b: b["context"].update(patientId="Patient/../../admin"), NOT_AN_ID),
    (lambda b: b.pop("hookInstance"), "hookInstance is required"),
    (lambda b: b["context"].pop("draftOrders"), "context.draftOrders is required"),
    (lambda b: b["context"].pop("selections"), "context.selections is required"),
    (lambda b: b["fhirAuthorization"].pop("access_token"), "fhirAuthorization.access_token is required"),
    (lambda b: b["fhirAuthorization"].update(access_token=""), "fhirAuthorization.access_token must not be empty"),
    (lambda b: b["fhirAuthorization"].update(token_type="MAC"), "fhirAuthorization.token_type must be 'Bearer'"),
    (lambda b: b["fhirAuthorization"].update(token_type=1), "fhirAuthorization.token_type must be 'Bearer'"),
])
def test_what_the_service_uses_stays_a_400(unreachable_client, change, expected):
    body = _with_auth()
    change(body)
    resp = unreachable_client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 400
    assert _outcome_text(resp) == expected


def test_pre_1_0_medications_context_is_400_naming_dstu2(unreachable_client):
    resp = _post(unreachable_client, "cds-hooks-docs/examples-opioid-order-sign.json")
    assert resp.status_code == 400 and "DSTU2" in _outcome_text(resp)
    assert resp.get_json()["issue"][0]["expression"] == ["context.medications[0]"]


def test_a_request_with_every_tolerated_deviation_is_answered_recorded_and_explained_without_error():
    """Nothing downstream reads the tolerated fields: evaluation, the issued-card log (which keys the
    patient id) and explain (the preview page and ``mg-cds explain``) work on such a request."""
    from cds_service.invocation import hook_input
    from cds_service.storage_issued import patient_hash
    body = _with_auth(scope="", subject=DROP, expires_in="300", token_type="bearer")
    body["context"].pop("userId")
    body["context"]["patientId"] = "Patient/" + body["context"]["patientId"]
    body["prefetch"]["patient"] = {"response": {"status": "200 OK"}, "resource": body["prefetch"]["patient"]}
    app = create_app(_config(CDS_ALLOWED_FHIR_SERVERS=UNREACHABLE, CDS_RECORD_CARDS=True, CDS_PREVIEW=True))
    client = app.test_client()
    resp = client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 200 and resp.get_json()["cards"]
    store = app.extensions["mg_cds"]["feedback"]
    store.flush()
    uuids = [c["uuid"] for c in resp.get_json()["cards"]]
    assert sorted(store.rules_for(uuids)) == sorted(uuids)  # every card logged with its rule
    service = app.extensions["mg_cds"]["services"]["mg-order-select"]
    hook_in, _ = hook_input(body, service, app.config)
    assert len(hook_in.request.deviations) == 7
    clean = parse_request(_with_auth(), "order-select")
    assert patient_hash(hook_in.request, b"k") == patient_hash(clean, b"k")  # the same patient in the log
    assert service.explain(hook_in)
    explained = client.post("/preview-api/explain/mg-order-select", json=body)
    assert explained.status_code == 200
