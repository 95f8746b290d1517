"""WSGI apps the HTTP benchmark serves under identical gunicorn settings:
mg-cds itself, a no-op Flask endpoint that only parses the JSON, and a Flask
endpoint that validates every prefetched resource with fhir.resources."""
from __future__ import annotations

import os
import tempfile

from flask import Flask, jsonify, request


def mg_app():
    """mg-cds with auth off; CDS_FEEDBACK_DB from the environment, else a temporary file."""
    from cds_service import create_app
    db = os.environ.get("CDS_FEEDBACK_DB") or os.path.join(tempfile.gettempdir(), f"mgcds-bench-{os.getpid()}.sqlite3")
    return create_app({"CDS_AUTH_MODE": "off", "CDS_NOW": "2026-11-25T12:00:00Z", "CDS_FEEDBACK_DB": db})


def noop_app():
    app = Flask("noop")

    @app.post("/cds-services/<service_id>")
    def invoke(service_id):
        request.get_json()
        return jsonify({"cards": []})
    return app


def validating_app():
    """Served with CDS_VALIDATION_CACHE=0: every resource of every request is validated."""
    from hooks.validation import validation_error
    app = Flask("validating")

    @app.post("/cds-services/<service_id>")
    def invoke(service_id):
        body = request.get_json()
        for value in body.get("prefetch", {}).values():
            if isinstance(value, dict):
                for r in ([e["resource"] for e in value.get("entry", [])] if value["resourceType"] == "Bundle" else [value]):
                    validation_error(r)
        return jsonify({"cards": []})
    return app
