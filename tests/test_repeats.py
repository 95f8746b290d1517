"""Repeat suppression at order-sign (cds_service.repeats): a card shown at
order-select for a draft and overridden is left out when that draft is signed,
unless anything that matters changed; the log that cannot be read shows it.

The MG services show it end to end (the azithromycin card of macrolide-grade3,
whose delete suggestion names its draft); two small services built here, whose
card the test sets, vary one thing at a time (rule, indicator, summary, draft),
which also shows the protocol layer needs no MG service to do it."""
from __future__ import annotations

import copy
import json
import sqlite3
import time
from typing import Any, Callable
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY

from cds_service import create_app, repeats, storage, storage_store
from cds_service.cards import Action, Card, CDSResponse, Coding, Source, Suggestion
from cds_service.feedback import FeedbackStore
from cds_service.service import HookInput, ServiceDefinition
from cds_service.storage_issued import instant_text

from .conftest import NOW, SCENARIOS, load_json, wait_until

RULE = "mg-exacerbating-drug"
DRAFT = "MedicationRequest/rx-32"
OVERRIDDEN_AT = "2026-11-25T12:01:00Z"  # the feedback's outcomeTimestamp
# Today's schema (version 1) as cds_service/storage.py at 13edde6 makes it (CreateTable/CreateIndex of
# its metadata; PostgreSQL differs only in feedback.id SERIAL).
SCHEMA_1 = """
CREATE TABLE feedback (id {id_type} NOT NULL, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL, outcome_timestamp TEXT NOT NULL, accepted_suggestions TEXT, override_system TEXT,
    override_code TEXT, override_display TEXT, user_comment TEXT, received_at TEXT NOT NULL, PRIMARY KEY (id));
CREATE UNIQUE INDEX feedback_item ON feedback (card_uuid, outcome, outcome_timestamp);
CREATE TABLE issued_cards (card_uuid TEXT NOT NULL, service_id TEXT NOT NULL, rule_id TEXT, issued_at TEXT NOT NULL,
    indicator VARCHAR(16), draft_order_id TEXT, patient_hash VARCHAR(64), content_hash VARCHAR(64),
    PRIMARY KEY (card_uuid));
CREATE INDEX issued_cards_patient_rule ON issued_cards (patient_hash, rule_id);
CREATE TABLE jwt_jti (iss TEXT NOT NULL, jti TEXT NOT NULL, expires_at FLOAT NOT NULL, PRIMARY KEY (iss, jti));
CREATE INDEX jwt_jti_expiry ON jwt_jti (expires_at);
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO schema_version VALUES (1);
"""
# Schema 2 as cds_service/storage.py at a59e3d7 (integ) makes it: schema 1 with the summary hash and the
# order-sign lookup's index in place of issued_cards_patient_rule.
SCHEMA_2 = (SCHEMA_1.replace("content_hash VARCHAR(64),", "content_hash VARCHAR(64), summary_hash VARCHAR(64),")
            .replace("CREATE INDEX issued_cards_patient_rule ON issued_cards (patient_hash, rule_id);",
                     "CREATE INDEX issued_cards_repeat ON issued_cards "
                     "(patient_hash, service_id, draft_order_id, rule_id, issued_at);")
            .replace("INSERT INTO schema_version VALUES (1);", "INSERT INTO schema_version VALUES (2);"))


def _config(db: str, **extra: Any) -> dict:
    key = "CDS_DATABASE_URL" if "://" in db else "CDS_FEEDBACK_DB"
    return {"CDS_AUTH_MODE": "off", key: db, "CDS_NOW": NOW, "CDS_LOG_LEVEL": "INFO",
            "CDS_PATIENT_HASH_KEY": "test-key", "CDS_PREVIEW": True, **extra}


def _select_request() -> dict:
    return load_json(SCENARIOS / "macrolide-grade3" / "request.json")


def _sign_request(select: dict) -> dict:
    """The same drafts signed: order-sign has no selections and a new hook instance."""
    sign = copy.deepcopy(select)
    sign["hook"], sign["hookInstance"] = "order-sign", str(uuid4())
    del sign["context"]["selections"]
    return sign


def _override(client, card: dict, outcome: str = "overridden", service: str = "mg-order-select") -> None:
    item: dict[str, Any] = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": OVERRIDDEN_AT}
    if outcome == "overridden" and card.get("overrideReasons"):
        item["overrideReason"] = {"reason": card["overrideReasons"][0]}
    assert client.post(f"/cds-services/{service}/feedback", json={"feedback": [item]}).status_code == 200


def _rules(resp) -> list[str]:
    assert resp.status_code == 200, resp.get_json()
    return [c["source"]["topic"]["code"] for c in resp.get_json()["cards"]]


def _suppressed(service: str, rule: str) -> float:
    return REGISTRY.get_sample_value("mgcds_suppressed_cards_total", {"service": service, "rule": rule}) or 0.0


def _events(err: str, event: str) -> list[dict]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [x for x in lines if x.get("event") == event]


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "db.sqlite3")


def _select_then(client, outcome: str | None) -> dict:
    """Order-select the azithromycin draft and answer its card (outcome None: no feedback)."""
    select = _select_request()
    cards = client.post("/cds-services/mg-order-select", json=select).get_json()["cards"]
    assert [c["source"]["topic"]["code"] for c in cards] == [RULE]
    if outcome:
        _override(client, cards[0], outcome)
    return select


def test_a_card_overridden_at_order_select_is_not_shown_again_at_order_sign(db, capsys):
    app = create_app(_config(db))
    client = app.test_client()
    select = _select_request()
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]  # not yet
    before = _suppressed("mg-order-sign", RULE)
    _select_then(client, "overridden")
    capsys.readouterr()
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []
    assert _suppressed("mg-order-sign", RULE) == before + 1
    logged = _events(capsys.readouterr().err, "cards_suppressed")
    assert [x["rules"] for x in logged] == [[RULE]]
    assert select["context"]["patientId"] not in json.dumps(logged)  # no patient data in the log
    explained = client.post("/preview-api/explain/mg-order-sign", json=_sign_request(select)).get_json()["repeats"]
    (decision,) = explained["decisions"]
    assert decision["suppressed"] and decision["rule_id"] == RULE and decision["draft_order_id"] == DRAFT
    assert "overridden" in decision["reason"] and decision["select_card"]
    # the clinician's outcomeTimestamp as sent (the feedback was received at the real clock, days later)
    assert decision["override_outcome_timestamp"] == OVERRIDDEN_AT
    assert _suppressed("mg-order-sign", RULE) == before + 1  # explain reads, it counts nothing
    # order-select and patient-view are never suppressed
    assert _rules(client.post("/cds-services/mg-order-select", json=select)) == [RULE]


@pytest.mark.parametrize("outcome", ["accepted", None])
def test_a_card_accepted_or_not_answered_at_order_select_is_shown_again(db, outcome):
    client = create_app(_config(db)).test_client()
    select = _select_then(client, outcome)
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]
    (decision,) = client.post("/preview-api/explain/mg-order-sign",
                              json=_sign_request(select)).get_json()["repeats"]["decisions"]
    assert not decision["suppressed"] and "no overridden order-select card" in decision["reason"]


def test_off_by_config_the_card_is_shown(db):
    client = create_app(_config(db, CDS_SUPPRESS_REPEATS=False)).test_client()
    select = _select_then(client, "overridden")
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]
    (decision,) = client.post("/preview-api/explain/mg-order-sign",
                              json=_sign_request(select)).get_json()["repeats"]["decisions"]
    assert not decision["suppressed"] and "CDS_SUPPRESS_REPEATS" in decision["reason"]
    on = create_app(_config(db)).test_client()  # the same database, suppression on
    assert _rules(on.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []


def test_without_the_card_log_there_is_no_lookup_and_explain_says_why(db, monkeypatch):
    lookups: list[int] = []
    real = repeats._lookup
    monkeypatch.setattr(repeats, "_lookup", lambda *a, **k: lookups.append(1) or real(*a, **k))
    client = create_app(_config(db)).test_client()
    select = _select_then(client, "overridden")  # logged and overridden while the log was on
    off = create_app(_config(db, CDS_RECORD_CARDS=False)).test_client()
    assert _rules(off.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]
    (decision,) = off.post("/preview-api/explain/mg-order-sign",
                           json=_sign_request(select)).get_json()["repeats"]["decisions"]
    assert not decision["suppressed"] and "CDS_RECORD_CARDS is off" in decision["reason"]
    assert lookups == []
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []  # log on: looked up
    assert lookups == [1]


def _dose(draft: dict) -> dict:
    return draft["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]


def _rituximab_3000_mg_x8(draft: dict) -> None:
    _dose(draft)["value"] = 3000
    draft["dosageInstruction"][0]["timing"]["repeat"]["count"] = 8


# The review's reproduction and its two siblings: the dose check's draft signed with a higher dose that
# keeps the card's summary and indicator (IVIG 42 g x 5 days = 2.92 g/kg: still "warning", below 3 g/kg).
DOSE_RAISED: dict[str, tuple[str, Callable[[dict], None]]] = {
    "f05-rituximab-1000mg-weekly-x4-overdose": ("rituximab-dose-check", _rituximab_3000_mg_x8),
    "ivig-dose-too-high": ("ivig-dose-check", lambda d: _dose(d).update(value=42)),
    "pyridostigmine-too-high": ("pyridostigmine-dose-check", lambda d: _dose(d).update(value=360)),
}


@pytest.mark.parametrize("scenario", sorted(DOSE_RAISED))
def test_a_draft_signed_with_a_raised_dose_shows_the_cards_overridden_at_order_select(db, scenario):
    rule, raise_dose = DOSE_RAISED[scenario]
    client = create_app(_config(db)).test_client()
    select = load_json(SCENARIOS / scenario / "request.json")
    cards = client.post("/cds-services/mg-order-select", json=select).get_json()["cards"]
    assert rule in [c["source"]["topic"]["code"] for c in cards]
    for card in cards:
        _override(client, card)
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []  # unchanged
    sign = _sign_request(select)
    (entry,) = sign["context"]["draftOrders"]["entry"]
    raise_dose(entry["resource"])  # the same draft id, another dose
    shown = _rules(client.post("/cds-services/mg-order-sign", json=sign))
    assert rule in shown and len(shown) == len(cards)  # every card about that draft is shown again
    decisions = client.post("/preview-api/explain/mg-order-sign", json=sign).get_json()["repeats"]["decisions"]
    assert decisions and not any(d["suppressed"] for d in decisions)
    assert all("draft order's content changed" in d["reason"] for d in decisions)


def _age_issued_cards(path: str, hours: float) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE issued_cards SET issued_at = ?", (instant_text(time.time() - hours * 3600),))


def test_within_the_window_suppressed_after_it_shown(db):
    app = create_app(_config(db))
    client = app.test_client()
    select = _select_then(client, "overridden")
    app.extensions["mg_cds"]["feedback"].flush()
    _age_issued_cards(db, 23.9)
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []
    _age_issued_cards(db, 24.1)
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]
    short = create_app(_config(db, CDS_SUPPRESS_REPEATS_HOURS=2.0)).test_client()
    _age_issued_cards(db, 1.9)
    assert _rules(short.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []
    _age_issued_cards(db, 2.1)
    assert _rules(short.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]


def test_the_database_unreadable_shows_the_card_with_a_log_line_and_a_metric(db, tmp_path, capsys):
    app = create_app(_config(db))
    client = app.test_client()
    select = _select_then(client, "overridden")
    store = app.extensions["mg_cds"]["feedback"]
    store.flush()
    good = store.url
    store.configure(f"sqlite:///{tmp_path}/missing-dir/db.sqlite3", store.patient_key)  # stops answering
    key = {"service": "mg-order-sign"}
    failed = REGISTRY.get_sample_value("mgcds_repeat_check_failed_total", key) or 0.0
    capsys.readouterr()
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]  # fail open
    assert REGISTRY.get_sample_value("mgcds_repeat_check_failed_total", key) == failed + 1
    (line,) = _events(capsys.readouterr().err, "repeat_check_unavailable")
    assert line["level"] == "WARNING" and line["service_id"] == "mg-order-sign" and line["error"]
    store.configure(good, store.patient_key)
    time.sleep(storage_store.FAIL_FAST_SECONDS)
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []  # back


def test_no_lookup_for_order_select_patient_view_or_a_sign_without_cards(db, monkeypatch):
    app = create_app(_config(db))
    client = app.test_client()
    lookups: list[int] = []
    real = repeats._lookup
    monkeypatch.setattr(repeats, "_lookup", lambda *a, **k: lookups.append(1) or real(*a, **k))
    select = _select_then(client, "overridden")
    pv = load_json(SCENARIOS / "pv-active-beta-blocker" / "request.json")
    assert client.post("/cds-services/mg-patient-view", json=pv).status_code == 200
    quiet = load_json(SCENARIOS / "no-mg-azithromycin" / "request.json")
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(quiet))) == []
    assert lookups == []
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []
    assert lookups == [1]


# Two small services (order-select and order-sign) whose one card the test sets.
class Toy:
    def __init__(self) -> None:
        self.card: dict[str, Any] = {"rule": "toy-rule", "indicator": "warning", "summary": "Toy advice",
                                     "detail": "- toy finding", "delete": "MedicationRequest/a"}
        self.client: Any = None  # the test client of an app serving these services

    def evaluate(self, hook_input: HookInput) -> CDSResponse:
        spec = self.card
        delete = [Suggestion(label="Remove", actions=[Action(type="delete", resourceId=spec["delete"])])] \
            if spec["delete"] else []
        if spec.get("update"):  # a suggestion that echoes the draft as received
            delete.append(Suggestion(label="Change", actions=[Action(
                type="update", resource=hook_input.request.draft_resources()[0])]))
        return CDSResponse(cards=[Card(summary=spec["summary"], indicator=spec["indicator"], detail=spec["detail"],
                                       source=Source(label="toy", topic=Coding(code=spec["rule"], system="urn:toy")),
                                       suggestions=delete, selectionBehavior="at-most-one" if delete else None)])

    def services(self) -> list[ServiceDefinition]:
        return [ServiceDefinition(id=f"toy-{hook}", hook=hook, title=hook, description=hook, prefetch={},
                                  evaluate=self.evaluate) for hook in ("order-select", "order-sign", "patient-view")]


TOY_DOSE = [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}},
             "doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}]}]


def _toy_request(hook: str, drafts: tuple[str, ...] = ("MedicationRequest/a",), patient: str = "p1",
                 selections: tuple[str, ...] = ("MedicationRequest/a",), draft: dict | None = None,
                 also: tuple[dict, ...] = ()) -> dict:
    """``draft``: elements set on every draft order; ``also``: more draftOrders resources (a Medication)."""
    entry = [{"resource": {"resourceType": "MedicationRequest", "id": d.split("/")[1], "status": "draft",
                           "intent": "order", "subject": {"reference": f"Patient/{patient}"},
                           "medicationCodeableConcept": {"text": "toy"}, "dosageInstruction": TOY_DOSE,
                           **copy.deepcopy(draft or {})}} for d in drafts]
    entry += [{"resource": r} for r in also]
    context: dict[str, Any] = {"userId": "Practitioner/1", "patientId": patient,
                               "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": entry}}
    if hook == "order-select":
        context["selections"] = list(selections)
    return {"hook": hook, "hookInstance": str(uuid4()), "context": context}


@pytest.fixture
def toy(db):
    t = Toy()
    t.client = create_app(_config(db), services=t.services()).test_client()
    return t


def _toy_select_override(toy: Toy, **request: Any) -> None:
    resp = toy.client.post("/cds-services/toy-order-select",
                           json=_toy_request("order-select", **request))
    _override(toy.client, resp.get_json()["cards"][0], service="toy-order-select")


def _toy_sign(toy: Toy, **request: Any) -> list[str]:
    return _rules(toy.client.post("/cds-services/toy-order-sign",
                                  json=_toy_request("order-sign", **request)))


CHANGES: dict[str, Callable[[Toy], dict]] = {
    # what changes between the overridden order-select card and the order-sign card: each is shown
    "indicator rose": lambda t: t.card.update(indicator="critical") or {},
    "summary changed": lambda t: t.card.update(summary="Toy advice, reworded") or {},
    "another rule": lambda t: t.card.update(rule="toy-other") or {},
    "another draft": lambda t: t.card.update(delete="MedicationRequest/b") or {"drafts": ("MedicationRequest/a",
                                                                                          "MedicationRequest/b")},
    "another patient": lambda t: {"patient": "p2"},
    "detail changed": lambda t: t.card.update(detail="- toy finding, now another") or {},
    # the same draft id signed with other content
    "draft dose raised": lambda t: {"draft": {"dosageInstruction": [{**TOY_DOSE[0], "doseAndRate": [
        {"doseQuantity": {"value": 30, "unit": "mg"}}]}]}},
    "draft medication changed": lambda t: {"draft": {"medicationCodeableConcept": {"text": "another toy"}}},
    "draft dispense added": lambda t: {"draft": {"dispenseRequest": {"numberOfRepeatsAllowed": 5}}},
    "draft status changed": lambda t: {"draft": {"status": "active"}},
    "draft extension added": lambda t: {"draft": {"extension": [{"url": "urn:toy", "valueString": "x"}]}},
    # several drafts signed and no delete naming one: which draft the card is about is not known
    "not about one draft": lambda t: t.card.update(delete=None) or {"drafts": ("MedicationRequest/a",
                                                                               "MedicationRequest/b")},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_card_that_changed_or_is_about_something_else_is_shown(toy, change):
    _toy_select_override(toy)
    assert _toy_sign(toy) == []  # unchanged: left out
    request = CHANGES[change](toy)
    assert _toy_sign(toy, **request) == [toy.card["rule"]]


@pytest.mark.parametrize("before, after, said", [("warning", "critical", "rose from warning to critical"),
                                                ("critical", "info", "changed from critical to info")])
def test_a_card_whose_indicator_rose_or_fell_is_shown_and_the_reason_says_so(toy, before, after, said):
    toy.card["indicator"] = before
    _toy_select_override(toy)
    toy.card["indicator"] = after
    assert _toy_sign(toy) == ["toy-rule"]
    decision = _toy_decision(toy)
    assert not decision.suppressed and f"indicator {said}" in decision.reason
    toy.card["indicator"] = before
    assert _toy_sign(toy) == []


def _toy_decision(toy: Toy, issuer: str = "", **request: Any) -> repeats.Decision:
    """What the order-sign check decides for the toy card (as explain shows it)."""
    from cds_service.request import parse_request
    app = toy.client.application
    (decision,) = repeats.check(app.extensions["mg_cds"]["feedback"], "order-sign",
                                parse_request(_toy_request("order-sign", **request), "order-sign"),
                                toy.evaluate(None).cards, ["toy-order-select"], app.config, issuer=issuer).decisions
    return decision


def test_the_reason_names_what_changed_first(toy):
    _toy_select_override(toy)
    assert _toy_decision(toy).suppressed
    dose = {"dosageInstruction": [{**TOY_DOSE[0], "doseAndRate": [{"doseQuantity": {"value": 30, "unit": "mg"}}]}]}
    assert "draft order's content changed" in _toy_decision(toy, draft=dose).reason
    toy.card["detail"] = "- toy finding, now another"
    assert "its detail, suggestions or links changed" in _toy_decision(toy).reason
    toy.card["summary"] = "Toy advice, reworded"
    assert "its summary changed" in _toy_decision(toy, draft=dose).reason  # the summary is told first


def test_meta_narrative_and_id_are_not_part_of_the_draft_content(toy):
    _toy_select_override(toy)
    noise = {"meta": {"versionId": "2", "lastUpdated": "2026-11-25T12:02:00Z"},
             "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">toy</div>"}}
    assert _toy_sign(toy, draft=noise) == []  # saved again by the EHR: the same order
    assert _toy_sign(toy, draft={**noise, "authoredOn": "2026-11-25"}) == ["toy-rule"]  # anything else counts


def test_a_referenced_medication_of_draft_orders_is_part_of_the_draft_content(toy):
    # Epic sends the Medication a draft's medicationReference names beside it in draftOrders.
    def medication(code: str, version: str = "1") -> dict:
        return {"resourceType": "Medication", "id": "m1", "meta": {"versionId": version},
                "code": {"coding": [{"system": "urn:toy-drugs", "code": code}]}}
    order = {"medicationReference": {"reference": "Medication/m1"}}
    _toy_select_override(toy, draft=order, also=(medication("A"),))
    assert _toy_sign(toy, draft=order, also=(medication("A", version="2"),)) == []
    assert _toy_sign(toy, draft=order, also=(medication("B"),)) == ["toy-rule"]
    assert "draft order's content changed" in _toy_decision(toy, draft=order, also=(medication("B"),)).reason


def test_a_sign_card_matches_the_select_card_of_its_own_draft_only(toy):
    # Two drafts selected one at a time; only the card of draft b is overridden.
    both = ("MedicationRequest/a", "MedicationRequest/b")
    for draft, outcome in (("MedicationRequest/a", "accepted"), ("MedicationRequest/b", "overridden")):
        toy.card["delete"] = draft
        resp = toy.client.post("/cds-services/toy-order-select",
                               json=_toy_request("order-select", drafts=both, selections=(draft,)))
        _override(toy.client, resp.get_json()["cards"][0], outcome, "toy-order-select")
    toy.card["delete"] = "MedicationRequest/a"
    assert _toy_sign(toy, drafts=both) == ["toy-rule"]
    toy.card["delete"] = "MedicationRequest/b"
    assert _toy_sign(toy, drafts=both) == []


def test_patient_view_is_never_suppressed(toy):
    _toy_select_override(toy)
    resp = toy.client.post("/cds-services/toy-patient-view",
                           json={"hook": "patient-view", "hookInstance": str(uuid4()),
                                 "context": {"userId": "Practitioner/1", "patientId": "p1"}})
    assert _rules(resp) == ["toy-rule"]


def test_two_ehrs_sending_the_same_patient_id_without_fhir_server_are_two_patients(db, tmp_path):
    """Both EHRs send only prefetch (no fhirServer) and share the database: the JWT issuer tells them apart."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey
    base = "https://cds.example.org"
    keys = {iss: RSAKey.generate_key(2048, parameters={"kid": f"kid-{i}"})
            for i, iss in enumerate(("https://ehr-a.example.org", "https://ehr-b.example.org"))}
    issuers = tmp_path / "issuers.json"
    issuers.write_text(json.dumps({iss: {"jwks": {"keys": [k.as_dict(private=False)]}} for iss, k in keys.items()}))
    toy = Toy()
    client = create_app(_config(db, CDS_AUTH_MODE="jwt", CDS_TRUSTED_ISSUERS=str(issuers), CDS_PUBLIC_BASE_URL=base,
                                CDS_PREVIEW=False), services=toy.services()).test_client()

    def call(iss: str, path: str, body: dict):
        now = int(time.time())
        claims = {"iss": iss, "aud": base + path, "exp": now + 300, "iat": now, "jti": str(uuid4())}
        token = jwt.encode({"alg": "RS384", "typ": "JWT", "kid": keys[iss].kid}, claims, keys[iss],
                           algorithms=["RS384"])
        return client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})

    a, b = keys
    select = _toy_request("order-select")
    assert "fhirServer" not in select
    (card,) = call(a, "/cds-services/toy-order-select", select).get_json()["cards"]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": OVERRIDDEN_AT}
    assert call(a, "/cds-services/toy-order-select/feedback", {"feedback": [item]}).status_code == 200
    assert _rules(call(b, "/cds-services/toy-order-sign", _toy_request("order-sign"))) == ["toy-rule"]  # B's p1
    assert _rules(call(a, "/cds-services/toy-order-sign", _toy_request("order-sign"))) == []  # A's p1


# Two apps (replicas) sharing one database: SQLite file here, PostgreSQL below.
def _across_replicas(make_config: Callable[[], dict], monkeypatch, sign_on: str) -> None:
    monkeypatch.setattr(storage_store, "FLUSH_SECONDS", 60.0)  # A's row stays queued unless a lookup writes it
    a, b = create_app(make_config()), create_app(make_config())
    select = _select_request()
    cards = a.test_client().post("/cds-services/mg-order-select", json=select).get_json()["cards"]
    store_a = a.extensions["mg_cds"]["feedback"]
    assert store_a.pending() == len(cards)
    _override(b.test_client(), cards[0])
    if sign_on == "A":  # A's lookup writes its own queued order-select row first
        assert _rules(a.test_client().post("/cds-services/mg-order-sign", json=_sign_request(select))) == []
    else:  # another replica sees the row once A's writer has written it (at most 1 s after the answer)
        store_a.flush()
    assert _rules(b.test_client().post("/cds-services/mg-order-sign", json=_sign_request(select))) == []
    assert store_a.pending() == 0
    other = _sign_request(select)  # the same draft id, another medication: the draft hash read back differs
    other["context"]["draftOrders"]["entry"][0]["resource"]["medicationCodeableConcept"] = {
        "text": "azithromycin 250 mg tablet"}
    assert _rules(b.test_client().post("/cds-services/mg-order-sign", json=other)) == [RULE]
    (decision,) = b.test_client().post("/preview-api/explain/mg-order-sign",
                                       json=other).get_json()["repeats"]["decisions"]
    assert "draft order's content changed" in decision["reason"]


@pytest.mark.parametrize("sign_on", ["A", "B"])
def test_two_apps_sharing_a_sqlite_file(db, monkeypatch, sign_on):
    _across_replicas(lambda: _config(db), monkeypatch, sign_on)


def test_the_background_writer_makes_the_select_card_visible_to_other_replicas_within_a_second(db):
    a, b = create_app(_config(db)), create_app(_config(db))
    select = _select_request()
    cards = a.test_client().post("/cds-services/mg-order-select", json=select).get_json()["cards"]
    _override(b.test_client(), cards[0])
    store_b = b.extensions["mg_cds"]["feedback"]
    assert wait_until(lambda: store_b.rules_for([cards[0]["uuid"]]), storage_store.FLUSH_SECONDS + 2.0)  # on B
    assert _rules(b.test_client().post("/cds-services/mg-order-sign", json=_sign_request(select))) == []


@pytest.fixture(scope="module")
def pg_server():
    from .test_postgres import start_server
    srv = start_server()  # under CI=true a server that cannot start fails; elsewhere skips saying why
    yield srv
    srv.remove()


@pytest.mark.parametrize("sign_on", ["A", "B"])
def test_two_apps_sharing_postgres(pg_server, monkeypatch, sign_on):
    url = pg_server.new_database()
    _across_replicas(lambda: _config(url, CDS_LOG_LEVEL="ERROR"), monkeypatch, sign_on)


def _upgraded_keeps_rows_and_suppresses_new_cards(store: FeedbackStore, client) -> None:
    assert store.rules_for(["old-card"]) == {"old-card": RULE}
    select = _select_request()
    # the old row (no summary hash in schema 1, no draft hash in schema 2) matched nothing: its card is shown ...
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == [RULE]
    _select_then(client, "overridden")  # ... and a card overridden after the upgrade is left out
    assert _rules(client.post("/cds-services/mg-order-sign", json=_sign_request(select))) == []


def _old_rows(version: int) -> list[str]:
    """An overridden order-select card as schema ``version`` logged it: the very card of today (rule,
    patient, draft, indicator, content, and in schema 2 summary), so only the hashes it lacks tell it apart."""
    from cds_service.request import parse_request
    from cds_service.storage_issued import content_hash, patient_hash, summary_hash
    scratch = create_app(_config(":memory:", CDS_LOG_LEVEL="ERROR", CDS_RECORD_CARDS=False)).test_client()
    (card,) = [Card.from_json(c) for c in scratch.post("/cds-services/mg-order-select",
                                                       json=_select_request()).get_json()["cards"]]
    patient = patient_hash(parse_request(_select_request(), "order-select"), b"test-key")
    columns = "card_uuid, service_id, rule_id, issued_at, indicator, draft_order_id, patient_hash, content_hash"
    values = (f"'old-card', 'mg-order-select', '{RULE}', '{instant_text(time.time() - 60)}', '{card.indicator}', "
              f"'{DRAFT}', '{patient}', '{content_hash(card)}'")
    if version >= 2:
        columns, values = f"{columns}, summary_hash", f"{values}, '{summary_hash(card)}'"
    return [f"INSERT INTO issued_cards ({columns}) VALUES ({values})",
            "INSERT INTO feedback (service_id, card_uuid, outcome, outcome_timestamp, received_at) VALUES "
            f"('mg-order-select', 'old-card', 'overridden', '{OVERRIDDEN_AT}', '{OVERRIDDEN_AT}')"]


OLD_SCHEMAS = {1: SCHEMA_1, 2: SCHEMA_2}


@pytest.mark.parametrize("version", sorted(OLD_SCHEMAS))
def test_an_older_sqlite_database_is_upgraded_in_place(db, version):
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMAS[version].format(id_type="INTEGER"))
        for sql in _old_rows(version):
            conn.execute(sql)
    app = create_app(_config(db))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(storage.SCHEMA_VERSION,)]
        columns = [r[1] for r in conn.execute("PRAGMA table_info(issued_cards)")]
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(issued_cards)")}
        assert conn.execute("SELECT draft_hash FROM issued_cards").fetchall() == [(None,)]
    assert {"summary_hash", "draft_hash"} <= set(columns)
    assert "issued_cards_repeat" in indexes and "issued_cards_patient_rule" not in indexes
    if version == 2:  # the same card, only the draft hash missing: explain says so
        (decision,) = app.test_client().post("/preview-api/explain/mg-order-sign", json=_sign_request(
            _select_request())).get_json()["repeats"]["decisions"]
        assert decision["select_card"] == "old-card" and "without its draft's content hash" in decision["reason"]
    _upgraded_keeps_rows_and_suppresses_new_cards(app.extensions["mg_cds"]["feedback"], app.test_client())


@pytest.mark.parametrize("version", sorted(OLD_SCHEMAS))
def test_an_older_postgres_database_is_upgraded_in_place(pg_server, version):
    import psycopg
    url = pg_server.new_database()
    with psycopg.connect(url, autocommit=True) as conn:
        for sql in [s for s in OLD_SCHEMAS[version].format(id_type="SERIAL").split(";") if s.strip()] + _old_rows(
                version):
            conn.execute(sql)
    app = create_app(_config(url, CDS_LOG_LEVEL="ERROR"))
    app.extensions["mg_cds"]["feedback"].ping()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(storage.SCHEMA_VERSION,)]
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'issued_cards'")}
        assert conn.execute("SELECT draft_hash FROM issued_cards").fetchall() == [(None,)]
    assert "issued_cards_repeat" in indexes and "issued_cards_patient_rule" not in indexes
    _upgraded_keeps_rows_and_suppresses_new_cards(app.extensions["mg_cds"]["feedback"], app.test_client())


def test_the_lookup_uses_the_index(db):
    store = FeedbackStore(db)
    store.ping()
    from sqlalchemy import text
    values = repeats.parameters("p", {DRAFT, "MedicationRequest/other"}, {RULE}, ["mg-order-select"], 24.0)
    stmt_text = str(repeats.statement(1, 2, 1).params(values).compile(compile_kwargs={"literal_binds": True}))
    with store.transaction() as conn:
        plan = " ".join(str(r) for r in conn.execute(text(f"EXPLAIN QUERY PLAN {stmt_text}")))
    assert "issued_cards_repeat" in plan and "feedback_item" in plan


def _nested_draft(hook: str, depth: int) -> bytes:
    """A toy request whose draft carries an extension value nested ``depth`` arrays deep (as bytes:
    json.dumps itself would recurse that deep)."""
    request = _toy_request(hook, draft={"extension": [{"url": "urn:toy", "valueString": "NESTED"}]})
    return json.dumps(request).replace('"NESTED"', "[" * depth + "]" * depth).encode()


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_a_draft_nested_a_thousand_deep_is_answered_not_a_500(toy, hook):
    """The draft's references are walked without recursion (storage_issued._references)."""
    resp = toy.client.post(f"/cds-services/toy-{hook}", data=_nested_draft(hook, 1000),
                           content_type="application/json")
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    assert [c["source"]["topic"]["code"] for c in resp.get_json()["cards"]] == ["toy-rule"]


BIG = 10 ** 400  # past a double: read by the stdlib fallback as an int, which orjson cannot write


def _big_int_request(hook: str, patient: str = "p1") -> bytes:
    request = _toy_request(hook, patient=patient,
                           draft={"extension": [{"url": "urn:toy", "valueInteger": "BIG"}]})
    return json.dumps(request).replace('"BIG"', str(BIG)).encode()


def _issued_rows(db: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT service_id, content_hash FROM issued_cards").fetchall()


def test_a_card_echoing_an_integer_past_64_bits_is_answered_and_logged_with_the_other_rows(toy, db):
    """The answer is written with the stdlib's json when orjson cannot; the card log's hash too, and
    the other patients' rows of the same batch are written."""
    toy.card["update"] = True
    select = toy.client.post("/cds-services/toy-order-select", data=_big_int_request("order-select"),
                             content_type="application/json")
    assert select.status_code == 200, select.get_data(as_text=True)[:300]
    (update,) = [a for s in select.get_json()["cards"][0]["suggestions"] for a in s["actions"]
                 if a["type"] == "update"]
    assert update["resource"]["extension"][0]["valueInteger"] == BIG
    other = toy.client.post("/cds-services/toy-order-select", json=_toy_request("order-select", patient="p2"))
    assert other.status_code == 200
    sign = toy.client.post("/cds-services/toy-order-sign", data=_big_int_request("order-sign"),
                           content_type="application/json")
    assert sign.status_code == 200, sign.get_data(as_text=True)[:300]
    store = toy.client.application.extensions["mg_cds"]["feedback"]
    assert store.flush_quietly()
    rows = _issued_rows(db)
    assert len(rows) == 3 and all(h for _, h in rows)


def test_a_row_that_cannot_be_made_is_dropped_alone_and_the_sign_still_answers(toy, db, monkeypatch, capsys):
    """Whatever a row fails with, the batch's other rows are written, the writer lives on, and the
    order-sign that flushes first still answers (fails open); the log line names no patient."""
    from cds_service import storage_issued

    hashed = storage_issued.content_hash

    def content_hash(card: Card) -> str:
        if card.summary == "Bad":
            raise TypeError("stubbed: a row that cannot be made")
        return hashed(card)

    monkeypatch.setattr(storage_issued, "content_hash", content_hash)
    for summary, patient in (("Good", "p-good"), ("Bad", "p-bad")):
        toy.card["summary"] = summary
        assert toy.client.post("/cds-services/toy-order-select",
                               json=_toy_request("order-select", patient=patient)).status_code == 200
    capsys.readouterr()
    toy.card["summary"] = "Good"
    sign = toy.client.post("/cds-services/toy-order-sign", json=_toy_request("order-sign", patient="p-bad"))
    assert sign.status_code == 200, sign.get_data(as_text=True)[:300]
    store = toy.client.application.extensions["mg_cds"]["feedback"]
    assert store.flush_quietly()
    assert len(_issued_rows(db)) == 2  # p-good's select card and the sign card; the bad row alone is dropped
    dropped = _events(capsys.readouterr().err, "issued_card_dropped")
    assert [d["error"] for d in dropped] == ["TypeError"] and "p-bad" not in json.dumps(dropped)
