"""Liveness has no dependency; readiness follows the database; a SQLite file
that cannot be opened stops the app at start (a PostgreSQL server that is down
at start does not: tests/test_postgres.py)."""
from __future__ import annotations

import pytest

from cds_service import create_app

from .conftest import NOW


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


def test_a_sqlite_file_that_cannot_be_opened_at_start_stops_the_app(tmp_path):
    with pytest.raises(RuntimeError, match="cannot open the SQLite database") as info:
        create_app({"CDS_AUTH_MODE": "off", "CDS_NOW": NOW,
                    "CDS_DATABASE_URL": f"sqlite:///{tmp_path}/no-such-dir/db.sqlite3"})
    assert "unable to open database file" in str(info.value.__cause__)
