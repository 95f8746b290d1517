"""Feedback: the spec's examples are stored and read back, bad feedback is
400, stored feedback survives a restart, and the per-rule report."""
from __future__ import annotations

import pytest

from cds_service import create_app
from cds_service.cli import main as cli

from .conftest import CONFORMANCE, SCENARIOS, load_json, wait_until

SPEC = CONFORMANCE / "spec-2.0.1"
EXAMPLES = ["feedback-accepted.json", "feedback-overridden.json", "feedback-overridden-with-reason.json"]


@pytest.fixture
def db_app(tmp_path):
    def make():
        return create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": str(tmp_path / "fb.sqlite3"),
                           "CDS_NOW": "2026-11-25T12:00:00Z"})
    return make


@pytest.mark.parametrize("name", EXAMPLES)
def test_spec_feedback_examples_are_stored_and_read_back(client, app, name):
    example = load_json(SPEC / name)
    resp = client.post("/cds-services/mg-order-select/feedback", json=example)
    assert resp.status_code == 200
    rows = app.extensions["mg_cds"]["feedback"].all()
    assert len(rows) == 1
    item = example["feedback"][0]
    assert rows[0]["card_uuid"] == item["card"]
    assert rows[0]["outcome"] == item["outcome"]
    assert rows[0]["outcome_timestamp"] == item["outcomeTimestamp"]
    assert rows[0]["service_id"] == "mg-order-select"
    if "overrideReason" in item:
        assert rows[0]["override_code"] == item["overrideReason"]["reason"]["code"]
        assert rows[0]["user_comment"] == item["overrideReason"]["userComment"]
    if "acceptedSuggestions" in item:
        assert item["acceptedSuggestions"][0]["id"] in rows[0]["accepted_suggestions"]


@pytest.mark.parametrize("mutate,field", [
    (lambda f: f.update(outcome="ignored"), "outcome"),
    (lambda f: f.pop("card"), "card"),
    (lambda f: f.update(outcomeTimestamp="yesterday"), "outcomeTimestamp"),
    (lambda f: f.update(acceptedSuggestions=[{"id": "x"}], outcome="overridden"), "acceptedSuggestions"),
    (lambda f: (f.pop("acceptedSuggestions"), f.update(overrideReason={"reason": {"system": "x"}}, outcome="overridden")),
     "overrideReason.reason"),
])
def test_invalid_feedback_is_400_naming_the_field(client, mutate, field):
    example = load_json(SPEC / "feedback-accepted.json")
    mutate(example["feedback"][0])
    resp = client.post("/cds-services/mg-order-select/feedback", json=example)
    assert resp.status_code == 400
    assert field in resp.get_json()["issue"][0]["details"]["text"]


def test_feedback_for_unknown_service_is_404(client):
    assert client.post("/cds-services/nope/feedback", json=load_json(SPEC / "feedback-accepted.json")).status_code == 404


def test_acknowledged_feedback_survives_a_restart(db_app):
    first = db_app().test_client()
    for name in EXAMPLES:
        assert first.post("/cds-services/mg-order-sign/feedback", json=load_json(SPEC / name)).status_code == 200
    again = db_app()
    assert len(again.extensions["mg_cds"]["feedback"].all()) == 3


def test_report_counts_overrides_per_rule(db_app, tmp_path, capsys):
    app = db_app()
    client = app.test_client()
    body = client.post("/cds-services/mg-order-select",
                       json=load_json(SCENARIOS / "macrolide-grade3" / "request.json")).get_json()
    card = body["cards"][0]
    reason = card["overrideReasons"][0]
    client.post("/cds-services/mg-order-select/feedback", json={"feedback": [
        {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T12:01:00Z",
         "overrideReason": {"reason": {"code": reason["code"], "system": reason["system"]}}}]})
    report = {r["rule_id"]: r for r in app.extensions["mg_cds"]["feedback"].report()}
    row = report["mg-exacerbating-drug"]
    assert (row["issued"], row["accepted"], row["overridden"], row["override_rate"]) == (1, 0, 1, 1.0)
    assert row["top_override_reasons"] == f"{reason['code']} (1)"
    csv_path = tmp_path / "report.csv"
    assert cli(["feedback-report", "--db", str(tmp_path / "fb.sqlite3"), "--csv", str(csv_path)]) == 0
    assert "mg-exacerbating-drug" in capsys.readouterr().out
    assert "mg-exacerbating-drug,1,0,1,1.0" in csv_path.read_text()


@pytest.mark.parametrize("reason", [{"code": "x", "system": ["not", "a", "string"]}, {"code": "\udbea"},
                                    {"code": "x", "display": 5}])
def test_override_reason_fields_must_be_text(client, reason):
    """Found by schemathesis: a list as Coding.system reached SQLite and answered 500."""
    body = {"feedback": [{"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-25T12:00:00Z",
                          "overrideReason": {"reason": reason}}]}
    resp = client.post("/cds-services/mg-order-select/feedback", json=body)
    assert resp.status_code == 400


def _issued_rows(path) -> list[tuple]:
    import sqlite3
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT card_uuid, service_id, rule_id FROM issued_cards ORDER BY card_uuid").fetchall()


def test_issued_cards_are_written_behind_the_answer_within_the_flush_interval(tmp_path, monkeypatch):
    from cds_service import feedback, storage_store
    monkeypatch.setattr(storage_store, "FLUSH_SECONDS", 0.2)
    path = str(tmp_path / "fb.sqlite3")
    store = feedback.FeedbackStore(path)
    store.ping()  # first start: the schema is made
    store.record_cards("mg-order-select", [("u1", "ivig-dose-check"), ("u2", None)])
    assert store.pending() == 2  # queued, not yet written
    assert wait_until(lambda: _issued_rows(path))
    assert _issued_rows(path) == [("u1", "mg-order-select", "ivig-dose-check"), ("u2", "mg-order-select", None)]


def test_issued_cards_are_written_when_the_batch_is_full_and_before_a_lookup(tmp_path, monkeypatch):
    from cds_service import feedback, storage_store
    monkeypatch.setattr(storage_store, "FLUSH_SECONDS", 60.0)
    monkeypatch.setattr(storage_store, "FLUSH_ROWS", 3)
    path = str(tmp_path / "fb.sqlite3")
    store = feedback.FeedbackStore(path)
    store.ping()
    store.record_cards("s", [("a", "r1")])
    assert store.rules_for(["a"]) == {"a": "r1"}  # a lookup writes the queue first
    store.record_cards("s", [("b", "r2"), ("c", "r3")])
    assert len(_issued_rows(path)) == 1
    store.record_cards("s", [("d", "r4")])  # the third queued row fills the batch: written in the background
    assert wait_until(lambda: len(_issued_rows(path)) == 4)
    assert [r[0] for r in _issued_rows(path)] == ["a", "b", "c", "d"]


def test_issued_card_flushes_from_the_timer_run_alongside_requests_without_errors(monkeypatch):
    import threading
    import time

    from cds_service import storage_store
    monkeypatch.setattr(storage_store, "FLUSH_SECONDS", 0.02)
    failures: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z"})
    client = app.test_client()
    request = load_json(SCENARIOS / "ivig-dose-too-high" / "request.json")
    issued = set()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        resp = client.post("/cds-services/mg-order-select", json=request)
        assert resp.status_code == 200
        issued.update(c["uuid"] for c in resp.get_json()["cards"])
    time.sleep(0.1)
    assert failures == []
    assert issued and set(app.extensions["mg_cds"]["feedback"].rules_for(sorted(issued))) == issued


def test_the_same_feedback_item_sent_twice_is_stored_once(client, app):
    example = load_json(SPEC / "feedback-overridden-with-reason.json")
    batch = {"feedback": example["feedback"] * 2}  # a batch that repeats an item, then the batch again
    for _ in range(2):
        assert client.post("/cds-services/mg-order-select/feedback", json=batch).status_code == 200
    rows = app.extensions["mg_cds"]["feedback"].all()
    assert len(rows) == 1
    other = dict(example["feedback"][0], outcomeTimestamp="2026-11-25T12:05:00Z")  # a new decision on the card
    assert client.post("/cds-services/mg-order-select/feedback", json={"feedback": [other]}).status_code == 200
    assert len(app.extensions["mg_cds"]["feedback"].all()) == 2


def test_feedback_to_one_instance_is_attributed_to_the_rule_another_instance_issued(db_app):
    """Two app instances on one database (two replicas): B issues the card, A gets the feedback."""
    issuer, receiver = db_app(), db_app()
    card = issuer.test_client().post("/cds-services/mg-order-select", json=load_json(
        SCENARIOS / "macrolide-grade3" / "request.json")).get_json()["cards"][0]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T12:01:00Z"}
    issuer.extensions["mg_cds"]["feedback"].flush()  # B's queue written (within FLUSH_SECONDS in service)
    for app in (receiver, issuer):  # the same item sent to both replicas
        assert app.test_client().post("/cds-services/mg-order-select/feedback",
                                      json={"feedback": [item]}).status_code == 200
    report = {r["rule_id"]: r for r in receiver.extensions["mg_cds"]["feedback"].report()}
    assert report["mg-exacerbating-drug"]["overridden"] == 1
    assert "(unknown rule)" not in report


def test_a_batch_mixing_items_with_and_without_optional_fields_is_stored(client, app):
    """Found by test_fuzz: executemany needs every row to name the same columns (it was a 500)."""
    accepted = load_json(SPEC / "feedback-accepted.json")["feedback"][0]
    overridden = load_json(SPEC / "feedback-overridden-with-reason.json")["feedback"][0]
    bare = load_json(SPEC / "feedback-overridden.json")["feedback"][0]
    resp = client.post("/cds-services/mg-order-select/feedback", json={"feedback": [bare, accepted, overridden]})
    assert resp.status_code == 200
    rows = {r["card_uuid"] + r["outcome"] + r["outcome_timestamp"]: r for r in app.extensions["mg_cds"]["feedback"].all()}
    assert len(rows) == len({f["card"] + f["outcome"] + f["outcomeTimestamp"] for f in (bare, accepted, overridden)})
    assert any(r["accepted_suggestions"] for r in rows.values()) and any(r["user_comment"] for r in rows.values())


def test_accepting_a_folded_suggestion_is_attributed_to_the_rule_it_came_from(db_app):
    """rules.md v2, card budget: a suggestion folded into the also-due card keeps its uuid, and feedback
    accepting it counts for the rule that suggestion came from, not for also-due (report and metric)."""
    from cds_service import metrics
    app = db_app()
    client = app.test_client()
    body = client.post("/cds-services/mg-patient-view",
                       json=load_json(SCENARIOS / "pv-also-due-folds-info-cards" / "request.json")).get_json()
    folded = next(c for c in body["cards"] if c["source"]["topic"]["code"] == "also-due")
    assert "rule_id" not in folded["suggestions"][0]  # internal: never sent
    chosen = folded["suggestions"][0]
    before = metrics.FEEDBACK.labels("mg-patient-view", "mg-workup-incomplete", "accepted")._value.get()
    assert client.post("/cds-services/mg-patient-view/feedback", json={"feedback": [
        {"card": folded["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-25T12:01:00Z",
         "acceptedSuggestions": [{"id": chosen["uuid"]}]}]}).status_code == 200
    report = {r["rule_id"]: r for r in app.extensions["mg_cds"]["feedback"].report()}
    assert report["mg-workup-incomplete"]["accepted"] == 1
    assert report["also-due"]["accepted"] == 0 and report["also-due"]["issued"] == 1
    assert metrics.FEEDBACK.labels("mg-patient-view", "mg-workup-incomplete", "accepted")._value.get() == before + 1
