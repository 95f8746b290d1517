"""Liveness and readiness, and the wiring of the shared database into the app.

* ``GET /healthz``: liveness. No dependency is checked: a database outage must not
  make the orchestrator restart every replica.
* ``GET /readyz``: readiness. 200 when the database answers (the schema is created
  or migrated then if it was not yet), else 503 with an OperationOutcome, so the
  load balancer sends calls to replicas that can check JWT ids and store feedback."""
from __future__ import annotations

import logging
import os

from flask import Blueprint, Flask, current_app, jsonify

from . import logs, tracing
from .errors import operation_outcome
from .storage import StorageUnavailable, database_url, redacted
from .storage_store import Store

bp = Blueprint("health", __name__)


def _store() -> Store:
    return current_app.extensions["mg_cds"]["feedback"]


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok", "services": sorted(current_app.extensions["mg_cds"]["services"])})


@bp.get("/readyz")
def readyz():
    store = _store()
    try:
        store.ping()
    except StorageUnavailable as exc:
        resp = jsonify(operation_outcome(f"not ready: {exc.message}", "transient"))
        resp.status_code = 503
        resp.headers["Retry-After"] = "5"
        return resp
    return jsonify({"status": "ready", "database": store.backend, "queued_issued_cards": store.pending(),
                    "dropped_issued_cards": store.dropped})


def register(app: Flask) -> None:
    """Point the store at CDS_DATABASE_URL (when set), make the schema, add the health routes, and
    trace the app when OTEL_EXPORTER_OTLP_ENDPOINT is set (cds_service.tracing).

    A PostgreSQL server that does not answer at start only makes /readyz answer 503 until it
    does; a SQLite file that cannot be opened is a configuration error (a path or permission
    problem that waiting will not fix), so the app refuses to start."""
    store: Store = app.extensions["mg_cds"]["feedback"]
    key = str(app.config.get("CDS_PATIENT_HASH_KEY", os.environ.get("CDS_PATIENT_HASH_KEY", "")) or "")
    store.configure(database_url(app.config, app.instance_path), key.encode())
    try:
        store.ping()
    except StorageUnavailable as exc:
        if store.backend == "sqlite":
            raise RuntimeError(f"cannot open the SQLite database {redacted(store.url)}") from exc.__cause__
        logs.log(logging.WARNING, "database not ready at start; /readyz answers 503 until it is",
                 database=redacted(store.url))
    app.register_blueprint(bp)
    tracing.init_app(app)
