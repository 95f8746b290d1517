"""OpenAPI 3.0 description of the service (served at /openapi.json), with
request and response schemas that follow CDS Hooks 2.0. Used for fuzzing
(schemathesis) and checked against the spec's example messages."""
from __future__ import annotations

from typing import Any, Iterable

from .request import FHIR_AUTHORIZATION_FIELDS, HOOK_CONTEXTS
from .service import ServiceDefinition

REF = "#/components/schemas/"
JSON_TYPES = {str: "string", int: "integer", list: "array", dict: "object"}


def _ref(name: str) -> dict:
    return {"$ref": REF + name}


def _array(items: dict, min_items: int = 0) -> dict:
    out: dict[str, Any] = {"type": "array", "items": items}
    if min_items:
        out["minItems"] = min_items
    return out


def _context_schema(hook: str) -> dict:
    props: dict[str, Any] = {"encounterId": {"type": "string"}}
    for key, typ in HOOK_CONTEXTS[hook].items():
        props[key] = {"type": JSON_TYPES[typ]}
    if "selections" in props:
        props["selections"] = _array({"type": "string"}, 1)
    if "draftOrders" in props:
        props["draftOrders"] = _ref("Bundle")
    props["userId"] = {"type": "string"}  # required by the hook, tolerated when absent (cds_service.request)
    props["patientId"]["minLength"] = 1
    return {"type": "object", "required": list(HOOK_CONTEXTS[hook]), "properties": props}


def _request_schema(hook: str) -> dict:
    return {"type": "object", "required": ["hook", "hookInstance", "context"], "properties": {
        "hook": {"type": "string", "enum": [hook]},
        "hookInstance": {"type": "string", "minLength": 1},
        "fhirServer": {"type": "string", "format": "uri"},
        "fhirAuthorization": _ref("FhirAuthorization"),
        "context": _context_schema(hook),
        "prefetch": {"type": "object", "additionalProperties": {"type": "object", "nullable": True}},
        "extension": {"type": "object"}}}


ERRORS = {"400": "The request is malformed or does not fit the hook", "401": "JWT missing or invalid",
          "404": "No such service", "405": "Method not allowed on this path",
          "412": "The patient's data could be neither prefetched nor fetched",
          "413": "Body too large", "415": "Body is not JSON", "500": "Internal error (the request id is in X-Request-ID)",
          "503": "The database does not answer (feedback, JWT ids); retry after Retry-After seconds"}


def _errors(codes: Iterable[str]) -> dict:
    return {c: {"description": ERRORS[c], "content": {"application/json": {"schema": _ref("OperationOutcome")}}}
            for c in codes}


COMPONENTS: dict[str, Any] = {
    "Coding": {"type": "object", "required": ["code"], "properties": {
        "code": {"type": "string"}, "system": {"type": "string"}, "display": {"type": "string"}}},
    "Source": {"type": "object", "required": ["label"], "properties": {
        "label": {"type": "string"}, "url": {"type": "string"}, "icon": {"type": "string"}, "topic": _ref("Coding")}},
    "Link": {"type": "object", "required": ["label", "url", "type"], "properties": {
        "label": {"type": "string"}, "url": {"type": "string"}, "type": {"type": "string", "enum": ["absolute", "smart"]},
        "appContext": {"type": "string"}, "autolaunchable": {"type": "boolean"}}},
    "Action": {"type": "object", "required": ["type"], "properties": {
        "type": {"type": "string", "enum": ["create", "update", "delete"]}, "description": {"type": "string"},
        "resource": {"type": "object"}, "resourceId": {"type": "string"}}},
    "Suggestion": {"type": "object", "required": ["label"], "properties": {
        "label": {"type": "string"}, "uuid": {"type": "string"}, "isRecommended": {"type": "boolean"},
        "actions": _array(_ref("Action"), 1)}},
    "Card": {"type": "object", "required": ["summary", "indicator", "source"], "properties": {
        "uuid": {"type": "string"}, "summary": {"type": "string", "minLength": 1, "maxLength": 139},
        "detail": {"type": "string", "minLength": 1}, "indicator": {"type": "string", "enum": ["info", "warning", "critical"]},
        "source": _ref("Source"), "suggestions": _array(_ref("Suggestion"), 1),
        "selectionBehavior": {"type": "string", "enum": ["at-most-one", "any"]},
        "overrideReasons": _array(_ref("Coding"), 1), "links": _array(_ref("Link"), 1)}},
    "CDSResponse": {"type": "object", "required": ["cards"], "properties": {
        "cards": _array(_ref("Card")), "systemActions": _array(_ref("Action"), 1)}},
    "Bundle": {"type": "object", "required": ["resourceType"], "properties": {
        "resourceType": {"type": "string", "enum": ["Bundle"]}, "type": {"type": "string"},
        "entry": _array({"type": "object", "properties": {"resource": {"type": "object", "required": ["resourceType"],
                                                                       "properties": {"resourceType": {"type": "string"},
                                                                                      "id": {"type": "string"}}}}})}},
    # Every field is REQUIRED in CDS Hooks 2.0; only access_token is read, the others are tolerated
    # when missing or malformed (cds_service.request.TOLERATED), so only it is required here.
    "FhirAuthorization": {"type": "object", "required": ["access_token"], "properties": {
        **{k: {"type": JSON_TYPES[t]} for k, t in FHIR_AUTHORIZATION_FIELDS.items()},
        "access_token": {"type": "string", "minLength": 1},
        "token_type": {"type": "string", "enum": ["Bearer", "bearer"]}}},
    "Service": {"type": "object", "required": ["hook", "description", "id"], "properties": {
        "hook": {"type": "string"}, "title": {"type": "string"}, "description": {"type": "string"},
        "id": {"type": "string"}, "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
        "usageRequirements": {"type": "string"}, "version": {"type": "string"}, "hookVersion": {"type": "string"}}},
    "Discovery": {"type": "object", "required": ["services"], "properties": {"services": _array(_ref("Service"))}},
    "Feedback": {"type": "object", "required": ["feedback"], "properties": {"feedback": _array({
        "type": "object", "required": ["card", "outcome", "outcomeTimestamp"], "properties": {
            "card": {"type": "string", "minLength": 1}, "outcome": {"type": "string", "enum": ["accepted", "overridden"]},
            "outcomeTimestamp": {"type": "string", "format": "date-time"},
            "acceptedSuggestions": _array({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}),
            "overrideReason": {"type": "object", "properties": {"reason": _ref("Coding"),
                                                                 "userComment": {"type": "string"}}}}}, 1)}},
    "OperationOutcome": {"type": "object", "required": ["resourceType", "issue"], "properties": {
        "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
        "issue": _array({"type": "object", "required": ["severity", "code"], "properties": {
            "severity": {"type": "string"}, "code": {"type": "string"},
            "details": {"type": "object", "properties": {"text": {"type": "string"}}},
            "diagnostics": {"type": "string"}, "expression": _array({"type": "string"})}}, 1)}},
}


def openapi_document(services: Iterable[ServiceDefinition]) -> dict[str, Any]:
    schemas = dict(COMPONENTS)
    paths: dict[str, Any] = {
        "/cds-services": {"get": {"operationId": "discovery", "summary": "CDS Hooks discovery",
                                  "responses": {"200": {"description": "The services",
                                                        "content": {"application/json": {"schema": _ref("Discovery")}}}}}},
        "/healthz": {"get": {"operationId": "healthz", "summary": "Liveness",
                             "responses": {"200": {"description": "Up", "content": {"application/json": {
                                 "schema": {"type": "object", "required": ["status"]}}}}}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "Readiness: the database answers",
                            "responses": {"200": {"description": "Ready", "content": {"application/json": {
                                "schema": {"type": "object", "required": ["status", "database"], "properties": {
                                    "status": {"type": "string", "enum": ["ready"]}, "database": {"type": "string"},
                                    "queued_issued_cards": {"type": "integer"},
                                    "dropped_issued_cards": {"type": "integer"}}}}}},
                                          **_errors(["503"])}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "Metrics in the Prometheus text format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3.0",
                                                        "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    }
    for s in services:
        name = f"Request_{s.hook.replace('-', '_')}"
        schemas[name] = _request_schema(s.hook)
        paths[f"/cds-services/{s.id}"] = {"post": {
            "operationId": f"invoke_{s.id}", "summary": s.title,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(name)}}},
            "responses": {"200": {"description": "Cards", "content": {"application/json": {"schema": _ref("CDSResponse")}}},
                          **_errors(["400", "401", "404", "405", "412", "413", "415", "500", "503"])}}}
        paths[f"/cds-services/{s.id}/feedback"] = {"post": {
            "operationId": f"feedback_{s.id}", "summary": f"Feedback on {s.id} cards",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("Feedback")}}},
            "responses": {"200": {"description": "Stored", "content": {"application/json": {"schema": {"type": "object"}}}},
                          **_errors(["400", "401", "404", "405", "413", "415", "500", "503"])}}}
    return {"openapi": "3.0.3",
            "info": {"title": "mg-cds", "version": "0.1.0",
                     "description": "CDS Hooks 2.0 services for myasthenia gravis (IVIG, rituximab, ICI, MG-worsening drugs)"},
            "paths": paths, "components": {"schemas": schemas}}
