"""Liveness has no dependency; readiness follows the database; a database that
is down at start does not stop the app from starting and answering cards."""
from __future__ import annotations

from cds_service import create_app

from .conftest import SCENARIOS, load_json

NOW = "2026-11-25T12:00:00Z"


def test_readyz_is_200_while_the_database_answers_and_503_with_an_operation_outcome_when_not(tmp_path):
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": str(tmp_path / "db.sqlite3"), "CDS_NOW": NOW})
    client = app.test_client()
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["database"] == "sqlite"
    app.extensions["mg_cds"]["feedback"].configure(f"sqlite:///{tmp_path}/no-such-dir/db.sqlite3")
    down = client.get("/readyz")
    assert down.status_code == 503
    body = down.get_json()
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "transient"
    assert down.headers["Retry-After"] == "5"
    live = client.get("/healthz")  # liveness does not follow the database
    assert live.status_code == 200 and "mg-order-select" in live.get_json()["services"]


def test_an_app_whose_database_is_down_at_start_still_starts_and_answers_cards(tmp_path):
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_NOW": NOW,
                      "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/no-such-dir/db.sqlite3"})
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    resp = client.post("/cds-services/mg-order-select", json=load_json(SCENARIOS / "macrolide-grade3" / "request.json"))
    assert resp.status_code == 200 and resp.get_json()["cards"]
    (tmp_path / "no-such-dir").mkdir()  # the database comes up: the schema is made then
    assert client.get("/readyz").status_code == 200
    assert app.extensions["mg_cds"]["feedback"].flush_quietly()
