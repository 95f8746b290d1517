"""Flask app factory and the CDS Hooks routes."""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from . import health, logs, metrics, repeats
from .auth import JWTVerifier, configured_audiences, load_trusted_issuers
from .config import load_config
from .decode import decode_body
from .egress import startup_warnings
from .errors import CDSError, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType, operation_outcome
from .feedback import FeedbackStore, accepted_ids, attributed, validate_feedback
from .fhir_client import new_session
from .ids import new_hex_id
from .invocation import hook_input
from .openapi import openapi_document
from .profiles import body_for
from .service import ServiceDefinition
from .storage import database_url

bp = Blueprint("cds", __name__)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _ext(name: str) -> Any:
    return current_app.extensions["mg_cds"][name]


def _services() -> dict[str, ServiceDefinition]:
    return _ext("services")


def _read_json(service: ServiceDefinition | None = None) -> Any:
    """The JSON body; a service's prefetch is decoded straight into its resource models."""
    ctype = (request.mimetype or "").lower()
    if ctype not in ("application/json", "application/fhir+json") and not ctype.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json")
    limit = current_app.config["CDS_MAX_BODY_BYTES"]
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body is larger than {limit} bytes")
    return decode_body(request.get_data(cache=False), service.decoder if service is not None else None)


def _authenticate() -> None:
    if current_app.config["CDS_AUTH_MODE"] != "jwt":
        return
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a Bearer JWT is required (CDS Hooks 2.0 authentication)")
    base = current_app.config["CDS_PUBLIC_BASE_URL"].rstrip("/")
    called = f"{base}{request.path}" if base else request.base_url
    # the configured values replace the called URL (which, without CDS_PUBLIC_BASE_URL, follows the Host header)
    audiences = configured_audiences(current_app.config["CDS_JWT_AUDIENCE"]) or (called,)
    g.jwt_claims = _ext("verifier").verify(token.strip(), audiences)


def select_services() -> list[str]:
    """The order-select services, whose cards order-sign does not repeat (cds_service.repeats)."""
    return [s.id for s in _services().values() if s.hook == "order-select"]


def _service(service_id: str) -> ServiceDefinition:
    g.service_id = service_id
    service = _services().get(service_id)
    if service is None:
        raise NotFound(f"no CDS service with id '{service_id}'")
    return service


@bp.get("/cds-services")
def discovery():
    return jsonify({"services": [s.discovery() for s in _services().values()]})


@bp.post("/cds-services/<service_id>")
def invoke(service_id: str):
    service = _service(service_id)
    _authenticate()
    hook_in, completed = hook_input(_read_json(service), service, current_app.config)
    g.hook_instance = hook_in.request.hook_instance
    g.fetched = completed.fetched
    for key in completed.fetched_keys:
        metrics.PREFETCH_FETCHES.labels(key, "ok").inc()
    for key in completed.failed_fetches:
        metrics.PREFETCH_FETCHES.labels(key, "failed").inc()
    response = service.evaluate(hook_in)
    store = _ext("feedback")
    issuer = str(g.get("jwt_claims", {}).get("iss") or "")  # tells EHRs apart in the issued-card log
    repeated = repeats.check(store, service.hook, hook_in.request, response.cards, select_services(),
                             current_app.config, issuer=issuer)
    response.cards = repeated.cards  # order-sign: without the cards overridden at order-select
    repeats.record(repeated, service.id, g.get("request_id"))
    g.cards = len(response.cards)
    for c in response.cards:
        metrics.CARDS.labels(service.id, c.rule_id or "", c.indicator).inc()
    if current_app.config["CDS_RECORD_CARDS"] and response.cards:
        store.record_issued(service.id, hook_in.request, response.cards, issuer=issuer)
    return current_app.response_class(body_for(response, hook_in.request, current_app.config["CDS_CLIENT_PROFILE"],
                                               service.topic_codes), mimetype="application/json")


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str):
    service = _service(service_id)
    _authenticate()
    rows = validate_feedback(_read_json())
    store = _ext("feedback")
    store.add(service.id, rows)
    rules = store.rules_for([r["card_uuid"] for r in rows] + [s for r in rows for s in accepted_ids(r)])
    for r in rows:
        for rule in attributed(r, rules, unknown="unknown"):
            metrics.FEEDBACK.labels(service.id, rule, r["outcome"]).inc()
    return jsonify({})


@bp.get("/metrics")
def metrics_endpoint():
    body, content_type = metrics.render()
    return current_app.response_class(body, mimetype=content_type.split(";")[0])


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_document(_services().values()))


def _register_error_handlers(app: Flask) -> None:
    def outcome_response(status: int, body: dict, headers: dict | None = None):
        resp = jsonify(body)
        resp.status_code = status
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(CDSError)
    def handle_cds_error(exc: CDSError):
        headers = {}
        if exc.status == 401:
            desc = exc.message.replace('"', "'")
            headers["WWW-Authenticate"] = f'Bearer realm="mg-cds", error="invalid_token", error_description="{desc}"'
        g.error = exc.message
        return outcome_response(exc.status, exc.operation_outcome(), headers)

    @app.errorhandler(RequestEntityTooLarge)
    def handle_too_large(exc):
        limit = app.config["CDS_MAX_BODY_BYTES"]
        return outcome_response(413, operation_outcome(f"request body is larger than {limit} bytes", "too-costly"))

    @app.errorhandler(HTTPException)
    def handle_http(exc: HTTPException):
        code = {404: "not-found", 405: "not-supported"}.get(exc.code or 500, "processing")
        return outcome_response(exc.code or 500, operation_outcome(exc.description or exc.name, code))

    @app.errorhandler(Exception)
    def handle_unexpected(exc: Exception):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}" if tb else "?"
        logs.log(logging.ERROR, "unhandled_error", request_id=g.get("request_id"),
                 error=type(exc).__name__, where=where)
        return outcome_response(500, operation_outcome("internal error; the request id is in X-Request-ID",
                                                       "exception"))


def _register_request_hooks(app: Flask) -> None:
    origins = [o.strip() for o in str(app.config["CDS_CORS_ORIGINS"]).split(",") if o.strip()]

    @app.before_request
    def start():
        g.started = time.perf_counter()
        rid = request.headers.get("X-Request-ID", "")
        g.request_id = rid if REQUEST_ID.match(rid) else new_hex_id()

    @app.after_request
    def finish(resp):
        origin = request.headers.get("Origin")
        if origin and ("*" in origins or origin in origins):
            resp.headers["Access-Control-Allow-Origin"] = "*" if "*" in origins else origin
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            resp.headers["Access-Control-Max-Age"] = "600"
            if "*" not in origins:
                resp.headers["Vary"] = "Origin"
        resp.headers["X-Request-ID"] = g.get("request_id", "")
        fields = {"request_id": g.get("request_id"), "method": request.method, "path": request.path,
                  "status": resp.status_code,
                  "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2)}
        for key in ("service_id", "hook_instance", "cards", "fetched", "error"):
            if g.get(key) is not None:
                fields[key] = g.get(key)
        logs.log(logging.INFO, "request", **fields)
        if request.endpoint and request.endpoint != "cds.metrics_endpoint":
            service = g.get("service_id") if g.get("service_id") in _services() else ""  # bounded label values
            metrics.REQUEST_SECONDS.labels(request.endpoint.split(".")[-1], service,
                                           str(resp.status_code)).observe(fields["duration_ms"] / 1000)
        return resp


def create_app(config: dict | None = None, services: list[ServiceDefinition] | None = None) -> Flask:
    """Build the CDS Hooks app. ``services`` defaults to the MG services in ``hooks``."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.update(load_config(config))
    app.config["MAX_CONTENT_LENGTH"] = app.config["CDS_MAX_BODY_BYTES"]
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False
    logs.configure(app.config["CDS_LOG_LEVEL"])
    if services is None:
        from hooks.services import SERVICES  # the MG services, registered from hooks/
        services = SERVICES
    from hooks import validation
    validation.VERDICTS_MAX = int(app.config["CDS_VALIDATION_CACHE"])  # one app per process
    session = new_session()
    store = FeedbackStore(database_url(app.config, app.instance_path))
    app.extensions["mg_cds"] = {
        "services": {s.id: s for s in services},
        "feedback": store,
        "verifier": JWTVerifier(load_trusted_issuers(app.config["CDS_TRUSTED_ISSUERS"]), session,
                                leeway=int(app.config["CDS_JWT_LEEWAY_SECONDS"]),
                                cache_seconds=float(app.config["CDS_JWKS_CACHE_SECONDS"]),
                                max_jwks_bytes=int(app.config["CDS_JWKS_MAX_BYTES"]),
                                first_use=store.first_jti_use),
    }
    if app.config["CDS_AUTH_MODE"] == "off":
        logs.log(logging.WARNING, "AUTH IS OFF: CDS_AUTH_MODE=off accepts unauthenticated calls; "
                 "use only for local development")
    elif not app.extensions["mg_cds"]["verifier"].issuers:
        logs.log(logging.WARNING, "CDS_AUTH_MODE=jwt but CDS_TRUSTED_ISSUERS is empty: every call will get 401")
    for warning in startup_warnings(app.config):  # who the prefetch fallback may call (egress.py)
        logs.log(logging.WARNING, warning)
    health.register(app)  # /healthz, /readyz and CDS_DATABASE_URL (G, issue 15)
    app.register_blueprint(bp)
    if app.config["CDS_PREVIEW"]:
        from .preview import bp as preview_bp
        app.register_blueprint(preview_bp)
    _register_error_handlers(app)
    _register_request_hooks(app)
    return app
