"""The storage layer on SQLite: which database the config names, the versioned
schema (made on first start, migrated from 0.1's file, by `db upgrade`), the
issued-card log's rows, and what a database outage does to each route."""
from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
from uuid import uuid4

import pytest

from cds_service import create_app, storage, storage_cli, storage_store
from cds_service.feedback import FeedbackStore
from cds_service.storage import StorageUnavailable, database_url

from .conftest import NOW, SCENARIOS, load_json, wait_until

# 0.1's SQLite schema (cds_service/feedback.py at 2c5cd2d), before the schema had a version.
SCHEMA_0_1 = """
CREATE TABLE feedback (id INTEGER PRIMARY KEY, service_id TEXT NOT NULL, card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL, outcome_timestamp TEXT NOT NULL, accepted_suggestions TEXT, override_system TEXT,
    override_code TEXT, override_display TEXT, user_comment TEXT,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));
CREATE INDEX feedback_card ON feedback(card_uuid);
CREATE TABLE jwt_jti (iss TEXT NOT NULL, jti TEXT NOT NULL, exp REAL NOT NULL, PRIMARY KEY (iss, jti)) WITHOUT ROWID;
CREATE TABLE issued_cards (card_uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL, rule_id TEXT,
    issued_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')));
"""


def test_the_url_wins_over_the_sqlite_path_and_a_relative_path_is_under_the_instance_folder(tmp_path):
    assert database_url({"CDS_DATABASE_URL": "postgresql://u:p@db:5432/cds", "CDS_FEEDBACK_DB": "/x.sqlite3"}) \
        == "postgresql://u:p@db:5432/cds"
    assert database_url({"CDS_DATABASE_URL": "", "CDS_FEEDBACK_DB": "/data/fb.sqlite3"}) == "sqlite:////data/fb.sqlite3"
    assert database_url({"CDS_DATABASE_URL": "", "CDS_FEEDBACK_DB": "fb.sqlite3"}, str(tmp_path / "inst")) \
        == f"sqlite:///{tmp_path}/inst/fb.sqlite3"
    assert database_url({"CDS_DATABASE_URL": "", "CDS_FEEDBACK_DB": ":memory:"}) == "sqlite://"
    assert storage.redacted("postgresql://u:secret@db/cds") == "postgresql://u:***@db/cds"
    for url in ("postgres://u:p@db/cds", "postgresql://u:p@db/cds", "postgresql+psycopg://u:p@db/cds"):
        assert FeedbackStore(url).backend == "postgresql"  # no connection is made before first use
        assert storage.new_engine(url).dialect.driver == "psycopg"


def test_create_app_uses_cds_database_url(tmp_path):
    url = f"sqlite:///{tmp_path}/by-url.sqlite3"
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": str(tmp_path / "by-path.sqlite3"),
                      "CDS_DATABASE_URL": url, "CDS_NOW": NOW})
    assert app.extensions["mg_cds"]["feedback"].url == url
    assert (tmp_path / "by-url.sqlite3").exists()  # the schema is made at start
    assert _version(tmp_path / "by-url.sqlite3") == storage.SCHEMA_VERSION


def _version(path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version FROM schema_version").fetchone()[0]


def test_a_0_1_database_is_migrated_keeping_its_rows_once_per_feedback_item(tmp_path):
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_0_1)
        for _ in range(2):  # 0.1 stored a resent item twice
            conn.execute("INSERT INTO feedback (service_id, card_uuid, outcome, outcome_timestamp) "
                         "VALUES ('s', 'c1', 'accepted', ?)", (NOW,))
        conn.execute("INSERT INTO issued_cards (card_uuid, service_id, rule_id) VALUES ('c1', 's', 'r1')")
        conn.execute("INSERT INTO jwt_jti VALUES ('iss', 'j1', 1e12)")
    store = FeedbackStore(str(path))
    store.ping()
    assert _version(path) == storage.SCHEMA_VERSION
    with sqlite3.connect(path) as conn:  # today's columns and indexes
        assert {"summary_hash", "draft_order_id", "draft_hash"} <= {r[1] for r in
                                                                   conn.execute("PRAGMA table_info(issued_cards)")}
        assert "issued_cards_repeat" in {r[1] for r in conn.execute("PRAGMA index_list(issued_cards)")}
    assert [(r["card_uuid"], r["outcome"]) for r in store.all()] == [("c1", "accepted")]
    assert store.rules_for(["c1"]) == {"c1": "r1"}
    assert not store.first_jti_use("iss", "j1", 1e12, 1.0)  # the old jti log still refuses replays
    store.add("s", [{"card_uuid": "c1", "outcome": "accepted", "outcome_timestamp": NOW}])
    assert len(store.all()) == 1


def test_db_upgrade_makes_then_reports_the_schema(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    storage_cli.add_db_parser(parser.add_subparsers())
    path = tmp_path / "new.sqlite3"
    version = storage.SCHEMA_VERSION
    for expected in (f"schema version 0 -> {version}", f"schema version {version}, up to date"):
        args = parser.parse_args(["db", "upgrade", "--db", str(path)])
        assert args.func(args) == 0
        assert expected in capsys.readouterr().out
    assert _version(path) == version


def test_a_schema_newer_than_the_release_is_refused_not_overwritten(tmp_path):
    path = tmp_path / "future.sqlite3"
    FeedbackStore(str(path)).ping()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StorageUnavailable, match="newer than this release"):
        FeedbackStore(str(path)).ping()
    assert _version(path) == 99


@pytest.fixture
def app(tmp_path):
    return create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": str(tmp_path / "db.sqlite3"), "CDS_NOW": NOW,
                       "CDS_PATIENT_HASH_KEY": "test-key"})


def _issued(path) -> list[dict]:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM issued_cards ORDER BY issued_at, card_uuid")]


def test_record_issued_rows_have_patient_hash_draft_order_indicator_and_content_hash(app, tmp_path):
    from cds_service.request import parse_request
    request = load_json(SCENARIOS / "macrolide-grade3" / "request.json")
    client = app.test_client()
    answers = [client.post("/cds-services/mg-order-select", json=request).get_json()["cards"] for _ in range(2)]
    store = app.extensions["mg_cds"]["feedback"]
    store.flush()
    before = len(_issued(tmp_path / "db.sqlite3"))
    from cds_service.cards import Card
    parsed = parse_request(request, "order-select")
    for cards in answers:  # the same cards again under new uuids (a repeat of the answer)
        store.record_issued("mg-order-select", parsed, [Card.from_json({**c, "uuid": str(uuid4())}) for c in cards],
                            issuer="")
    store.flush()
    rows = _issued(tmp_path / "db.sqlite3")[before:]
    assert len(rows) == 2 * len(answers[0])
    patient = request["context"]["patientId"]
    for row in rows:
        assert patient not in str(row) and len(row["patient_hash"]) == 64
        assert row["draft_order_id"] == ",".join(sorted(request["context"]["selections"]))
        assert row["indicator"] in ("info", "warning", "critical")
    first, again = rows[:len(rows) // 2], rows[len(rows) // 2:]
    assert [r["content_hash"] for r in first] == [r["content_hash"] for r in again]  # same card, same hash
    assert [r["summary_hash"] for r in first] == [r["summary_hash"] for r in again]
    assert rows[0]["summary_hash"] == hashlib.sha256(answers[0][0]["summary"].encode()).hexdigest()
    # the draft's content: the resource as received without id, meta and text, as sorted-key JSON
    (draft,) = [e["resource"] for e in request["context"]["draftOrders"]["entry"]
                if f"MedicationRequest/{e['resource']['id']}" == rows[0]["draft_order_id"]]
    content = [{k: v for k, v in draft.items() if k not in ("id", "meta", "text")}]
    expected = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert [r["draft_hash"] for r in rows] == [expected] * len(rows)
    assert {r["card_uuid"] for r in first}.isdisjoint(r["card_uuid"] for r in again)
    assert len({r["patient_hash"] for r in rows}) == 1
    store.record_issued("mg-order-select", parsed, [Card.from_json({**answers[0][0], "uuid": str(uuid4())})],
                        issuer="https://ehr.example.org")
    store.flush()
    assert _issued(tmp_path / "db.sqlite3")[-1]["patient_hash"] not in (rows[0]["patient_hash"], None)
    store.configure(store.url, b"another-key")
    store.record_issued("mg-order-select", parsed, [Card.from_json({**answers[0][0], "uuid": str(uuid4())})],
                        issuer="")
    store.flush()
    assert _issued(tmp_path / "db.sqlite3")[-1]["patient_hash"] not in (rows[0]["patient_hash"], None)


def test_a_database_outage_answers_cards_queues_their_rows_and_refuses_feedback_with_503(app, tmp_path, monkeypatch):
    monkeypatch.setattr(storage_store, "MAX_PENDING", 3)
    client = app.test_client()
    store = app.extensions["mg_cds"]["feedback"]
    good = store.url
    store.configure(f"sqlite:///{tmp_path}/missing-dir/db.sqlite3")  # the database stops answering
    request = load_json(SCENARIOS / "macrolide-grade3" / "request.json")
    uuids = []
    for _ in range(4):
        resp = client.post("/cds-services/mg-order-select", json=request)
        assert resp.status_code == 200
        uuids += [c["uuid"] for c in resp.get_json()["cards"]]
    assert not store.flush_quietly()
    assert store.pending() == 3 and store.dropped == len(uuids) - 3  # bounded: the oldest rows were dropped
    item = {"card": uuids[-1], "outcome": "accepted", "outcomeTimestamp": NOW}
    resp = client.post("/cds-services/mg-order-select/feedback", json={"feedback": [item]})
    assert resp.status_code == 503 and resp.get_json()["issue"][0]["code"] == "transient"
    assert store.rules_for(uuids) == {}  # readers fail open
    store.configure(good)  # the database is back: the queue is written
    assert store.flush_quietly() and store.pending() == 0
    assert set(store.rules_for(uuids)) == set(uuids[-3:])
    assert client.post("/cds-services/mg-order-select/feedback", json={"feedback": [item]}).status_code == 200


def test_during_an_outage_a_full_queue_does_not_start_a_write_per_answer(tmp_path, monkeypatch):
    import threading
    monkeypatch.setattr(storage_store, "FLUSH_ROWS", 2)
    monkeypatch.setattr(storage_store, "FLUSH_SECONDS", 60.0)
    store = FeedbackStore(f"sqlite:///{tmp_path}/missing-dir/db.sqlite3")
    store.record_cards("s", [("a", "r"), ("b", "r")])  # full: one background write, which fails
    assert wait_until(lambda: store.pending() == 2 and not store._flush_lock.locked())
    before = threading.active_count()
    for i in range(50):
        store.record_cards("s", [(f"c{i}", "r")])
    assert threading.active_count() <= before + 1
    assert store.pending() == 52
    store.configure(f"sqlite:///{tmp_path}/db.sqlite3")  # back: the queue is written, nothing retries on
    assert store.flush_quietly() and store.pending() == 0


def test_after_a_failed_attempt_calls_fail_at_once_for_a_moment_then_try_again(tmp_path, monkeypatch):
    import time
    monkeypatch.setattr(storage_store, "FAIL_FAST_SECONDS", 0.3)
    store = FeedbackStore(str(tmp_path / "db.sqlite3"))
    store.ping()
    (tmp_path / "moved").mkdir()
    store.configure(f"sqlite:///{tmp_path}/moved/missing/db.sqlite3")
    with pytest.raises(StorageUnavailable):
        store.ping()
    (tmp_path / "moved" / "missing").mkdir()  # the database is back at once
    with pytest.raises(StorageUnavailable):
        store.ping()  # within the fail-fast window: not tried
    time.sleep(0.35)
    store.ping()


def test_flush_for_writes_the_queue_only_when_it_holds_a_row_of_that_patient_and_service(tmp_path, monkeypatch):
    from cds_service.storage_issued import Issued
    monkeypatch.setattr(storage_store, "FLUSH_SECONDS", 60.0)
    store = FeedbackStore(str(tmp_path / "db.sqlite3"))
    store._queue([Issued("select", "c1", "r", 0.0, "patient-a"), Issued("sign", "c2", "r", 0.0, "patient-b")])
    store.flush_for("patient-b", ["select"])  # b's row is from another service: nothing is written
    store.flush_for("patient-c", ["select", "sign"])
    assert store.pending() == 2
    store.flush_for("patient-a", ["select"])
    assert store.pending() == 0 and set(store.rules_for(["c1", "c2"])) == {"c1", "c2"}
