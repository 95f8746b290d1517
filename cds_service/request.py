"""Parsing and validation of a CDS Hooks 2.0 service request.

Validate what you use, tolerate what you don't: a field the service reads (hook, hookInstance,
patientId, draftOrders, selections, fhirServer, the access token) is checked and a wrong one is a
400; a field the hook definition or the spec requires but no rule or fetch reads (context.userId,
fhirAuthorization's scope, subject, expires_in and the case of token_type) is accepted when it is
missing or malformed, and each such deviation is logged (``tolerated_deviation``, naming the field,
never its value) and counted (``mgcds_tolerated_deviations_total{deviation}``). A safety service that
refused to answer over a field it never reads would fail closed for nothing."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from flask import g, has_request_context
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from . import egress, logs, metrics
from .errors import BadRequest

# Context fields each hook requires, and their JSON types (CDS Hooks library,
# patient-view 1.0, order-select 1.0, order-sign 1.0). userId is required there too, but only a
# prefetch template's user token could read it and none does here: it is TOLERATED when absent.
HOOK_CONTEXTS: dict[str, dict[str, type]] = {
    "patient-view": {"patientId": str},
    "order-select": {"patientId": str, "selections": list, "draftOrders": dict},
    "order-sign": {"patientId": str, "draftOrders": dict},
}
OPTIONAL_CONTEXT: dict[str, type] = {"encounterId": str}
# fhirAuthorization as CDS Hooks 2.0 defines it (every field REQUIRED there). Only access_token is
# read (the fallback fetch sends it as a Bearer token); the others are TOLERATED (see below).
FHIR_AUTHORIZATION_FIELDS: dict[str, type] = {
    "access_token": str, "token_type": str, "expires_in": int, "scope": str, "subject": str,
}
# What is accepted though the spec says otherwise: deviation -> why accepting it is safe. These
# are the only values of the metric's label (bounded) and each has a line in the README.
TOLERATED: dict[str, str] = {
    "context.userId:missing": "no rule reads the user; only a prefetch template's user token could, "
                              "and none does (a template that did would report its key unavailable)",
    "context.userId:invalid": "as above: a userId that is not a non-empty string is never read",
    "context.patientId:reference": "'Patient/123' is read as the id 123: a FHIR id cannot contain '/', "
                                   "so the reference form has one meaning",
    "fhirAuthorization.token_type:missing": "only Bearer tokens exist in CDS Hooks; the token is sent as Bearer",
    "fhirAuthorization.token_type:case": "OAuth 2.0 token types are case-insensitive (RFC 6749 section 5.1)",
    "fhirAuthorization.scope:missing": "the scopes are never read: a query the token does not allow "
                                       "fails like any other fetch (its key is unavailable)",
    "fhirAuthorization.scope:empty": "as above",
    "fhirAuthorization.scope:invalid": "as above",
    "fhirAuthorization.subject:missing": "the service's own OAuth client id is never read",
    "fhirAuthorization.subject:empty": "as above",
    "fhirAuthorization.subject:invalid": "as above",
    "fhirAuthorization.expires_in:missing": "the token is used within the request's deadline and never kept",
    "fhirAuthorization.expires_in:invalid": "as above (e.g. \"300\" as a string)",
    "prefetch.pre-1.0-entry": "a prefetch value shaped as a batch response entry ({response, resource}, "
                              "the pre-1.0 draft that cqf-ruler still sends) is read as its resource when "
                              "its status is 2xx, and as absent otherwise (so it is fetched, never taken "
                              "as 'no data')",
}
# not dots alone: "." and ".." are path segments, not ids (Patient/.. is the server's root)
ID_CHARS = r"(?!\.+$)[A-Za-z0-9\-.]{1,64}"
PATIENT_REFERENCE = re.compile(rf"^Patient/({ID_CHARS})$")
# a patientId is rendered into the fallback fetch's URLs (Patient/{{context.patientId}}): only a FHIR id
# may be, never a path ("../../admin") that would send the bearer token elsewhere on the server
FHIR_ID = re.compile(ID_CHARS)  # use with fullmatch
# Resource shapes from other FHIR versions that this R4 service cannot read.
FOREIGN_VERSION_TYPES = {
    "MedicationOrder": "MedicationOrder is a FHIR DSTU2 resource; send a FHIR R4 MedicationRequest",
    "ProcedureRequest": "ProcedureRequest is a FHIR STU3 resource; send a FHIR R4 ServiceRequest",
    "ReferralRequest": "ReferralRequest is a FHIR STU3 resource; send a FHIR R4 ServiceRequest",
}


@dataclass
class CDSRequest:
    hook: str
    hook_instance: str
    context: dict[str, Any]
    fhir_server: str | None = None
    fhir_authorization: dict[str, Any] | None = None
    prefetch: dict[str, Any] = field(default_factory=dict)
    extension: dict[str, Any] | None = None
    # the TOLERATED deviations this request showed, each once
    deviations: list[str] = field(default_factory=list)

    @property
    def patient_id(self) -> str:
        return self.context["patientId"]

    @property
    def access_token(self) -> str | None:
        return (self.fhir_authorization or {}).get("access_token")

    def draft_resources(self) -> list[dict]:
        bundle = self.context.get("draftOrders") or {}
        return [e["resource"] for e in bundle.get("entry", []) if isinstance(e, dict) and isinstance(e.get("resource"), dict)]

    def draft_medications(self) -> list[dict]:
        """The Medications draftOrders carries beside its orders (Epic since February 2024): what
        a drafted MedicationRequest's medicationReference points to."""
        return [r for r in self.draft_resources() if r.get("resourceType") == "Medication"]


def _type_name(t: type) -> str:
    return {str: "string", int: "integer", list: "array", dict: "object"}[t]


def _require(obj: dict, key: str, typ: type, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise BadRequest(f"{where}{key} is required", expression=f"{where}{key}")
    value = obj[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise BadRequest(f"{where}{key} must be a {_type_name(typ)}", expression=f"{where}{key}")
    if isinstance(value, str) and not value.strip():
        raise BadRequest(f"{where}{key} must not be empty", expression=f"{where}{key}")
    return value


def check_fhir_version(resource: dict, where: str) -> None:
    rtype = resource.get("resourceType")
    if rtype in FOREIGN_VERSION_TYPES:
        raise BadRequest(f"{where}: {FOREIGN_VERSION_TYPES[rtype]}", expression=where)
    if rtype == "MedicationRequest" and isinstance(resource.get("medication"), dict):
        raise BadRequest(f"{where}: MedicationRequest.medication is the FHIR R5 shape; this service reads "
                         "FHIR R4 (medicationCodeableConcept or medicationReference)", expression=where)


def _validate_draft_orders(bundle: dict) -> None:
    where = "context.draftOrders"
    if bundle.get("resourceType") != "Bundle":
        raise BadRequest(f"{where} must be a FHIR Bundle", expression=where)
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest(f"{where}.entry must be an array", expression=f"{where}.entry")
    for i, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise BadRequest(f"{where}.entry[{i}].resource must be a FHIR resource", expression=f"{where}.entry[{i}]")
        check_fhir_version(resource, f"{where}.entry[{i}].resource")


def _validate_selections(selections: list, bundle: dict) -> None:
    present = {f"{r.get('resourceType')}/{r.get('id')}" for r in
               (e.get("resource", {}) for e in bundle.get("entry", []))}
    if not selections:
        raise BadRequest("context.selections must name at least one draft order", expression="context.selections")
    for i, ref in enumerate(selections):
        if not isinstance(ref, str):
            raise BadRequest(f"context.selections[{i}] must be a string", expression=f"context.selections[{i}]")
        if ref not in present:
            raise BadRequest(f"context.selections[{i}] '{ref}' does not match any entry in context.draftOrders",
                             expression=f"context.selections[{i}]")


def _validate_fhir_server(url: str) -> None:
    """Parsed as the fallback fetch parses it (urllib3): a URL it cannot parse (an unclosed IPv6
    bracket, a port that is not a number from 0 to 65535) is a 400 here, not a failed fetch later."""
    try:
        parts = parse_url(url)
    except LocationParseError:
        parts = None
    if parts is None or (parts.scheme or "").lower() not in ("http", "https") or not parts.host:
        raise BadRequest("fhirServer must be an absolute http(s) URL", expression="fhirServer")
    try:
        parts.host.encode("idna")  # as getaddrinfo encodes it
    except UnicodeError:
        raise BadRequest("fhirServer's host is not a valid host name (an empty label, or one longer than "
                         "63 characters)", expression="fhirServer") from None
    if egress.escapes(url):
        raise BadRequest("fhirServer's path must have no dot segment ('..', '.') and no backslash",
                         expression="fhirServer")


def _tolerate(deviations: list[str], deviation: str) -> None:
    if deviation not in TOLERATED:
        raise KeyError(deviation)  # every deviation accepted is listed (and documented)
    if deviation not in deviations:
        deviations.append(deviation)


def _optional_text(obj: dict, key: str, where: str, deviations: list[str]) -> None:
    """A string field the service never reads: missing, empty or not a string is tolerated."""
    value = obj.get(key)
    if value is None:
        _tolerate(deviations, f"{where}{key}:missing")
    elif not isinstance(value, str):
        _tolerate(deviations, f"{where}{key}:invalid")
    elif not value.strip():
        _tolerate(deviations, f"{where}{key}:empty")


def _validate_fhir_authorization(auth: Any, deviations: list[str]) -> None:
    where = "fhirAuthorization."
    if not isinstance(auth, dict):
        raise BadRequest("fhirAuthorization must be an object", expression="fhirAuthorization")
    _require(auth, "access_token", str, where)  # read: the fallback fetch sends it
    token_type = auth.get("token_type")
    if token_type is None:
        _tolerate(deviations, "fhirAuthorization.token_type:missing")
    elif not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise BadRequest("fhirAuthorization.token_type must be 'Bearer'", expression="fhirAuthorization.token_type")
    elif token_type != "Bearer":
        _tolerate(deviations, "fhirAuthorization.token_type:case")
    _optional_text(auth, "scope", where, deviations)
    _optional_text(auth, "subject", where, deviations)
    expires_in = auth.get("expires_in")
    if expires_in is None:
        _tolerate(deviations, "fhirAuthorization.expires_in:missing")
    elif not isinstance(expires_in, int) or isinstance(expires_in, bool):
        _tolerate(deviations, "fhirAuthorization.expires_in:invalid")


def _patient_id(context: dict, deviations: list[str]) -> dict:
    _require(context, "patientId", str, "context.")
    m = PATIENT_REFERENCE.match(context["patientId"])
    if not m:
        if not FHIR_ID.fullmatch(context["patientId"]):
            raise BadRequest("context.patientId must be a FHIR id (1 to 64 letters, digits, '-' or '.') "
                             "or 'Patient/' and one", expression="context.patientId")
        return context
    _tolerate(deviations, "context.patientId:reference")
    return {**context, "patientId": m.group(1)}


def _user_id(context: dict, deviations: list[str]) -> None:
    user = context.get("userId")
    if user is None:
        _tolerate(deviations, "context.userId:missing")
    elif not isinstance(user, str) or not user.strip():
        _tolerate(deviations, "context.userId:invalid")


def _pre_draft_orders(context: dict) -> None:
    """A context without draftOrders but with the pre-1.0 ``medications`` list: a DSTU2 request is
    named as such (the 400 says which version to send)."""
    medications = context.get("medications")
    if "draftOrders" not in context and isinstance(medications, list):
        for i, resource in enumerate(medications):
            if isinstance(resource, dict):
                check_fhir_version(resource, f"context.medications[{i}]")


def _prefetch(body: dict, deviations: list[str]) -> dict[str, Any]:
    prefetch = body.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise BadRequest("prefetch must be an object", expression="prefetch")
    if not any(isinstance(v, dict) and "resourceType" not in v and "resource" in v for v in prefetch.values()):
        return prefetch
    out: dict[str, Any] = {}
    for key, value in prefetch.items():
        if isinstance(value, dict) and "resourceType" not in value and "resource" in value:
            _tolerate(deviations, "prefetch.pre-1.0-entry")
            response = value.get("response")
            status = response.get("status") if isinstance(response, dict) else None
            if isinstance(value["resource"], dict) and (status is None or str(status).startswith("2")):
                out[key] = value["resource"]
            continue  # a failed entry is absent: fetched if it can be, never read as "no data"
        out[key] = value
    return out


def report(req: CDSRequest) -> None:
    """Log and count the request's tolerated deviations: the field, never its value. Inside an HTTP
    request the log line carries its request id (the ``request`` line's)."""
    where = {"request_id": g.get("request_id")} if has_request_context() and g.get("request_id") else {}
    for deviation in req.deviations:
        metrics.TOLERATED_DEVIATIONS.labels(deviation).inc()
        logs.log(logging.INFO, "tolerated_deviation", **where, deviation=deviation, hook=req.hook,
                 hook_instance=req.hook_instance)


def parse_request(body: Any, expected_hook: str) -> CDSRequest:
    """Validate a decoded request body for a service of hook ``expected_hook``; its tolerated
    deviations are logged and counted (``report``)."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    hook = _require(body, "hook", str, "")
    if hook != expected_hook:
        raise BadRequest(f"hook '{hook}' does not match this service, which answers '{expected_hook}'",
                         expression="hook")
    hook_instance = _require(body, "hookInstance", str, "")
    deviations: list[str] = []
    fhir_server = body.get("fhirServer")
    if fhir_server is not None:
        _require(body, "fhirServer", str, "")
        _validate_fhir_server(fhir_server)
    auth = body.get("fhirAuthorization")
    if auth is not None:
        _validate_fhir_authorization(auth, deviations)
        if fhir_server is None:
            raise BadRequest("fhirAuthorization is given without fhirServer", expression="fhirServer")
    context = _require(body, "context", dict, "")
    context = _patient_id(context, deviations)
    _user_id(context, deviations)
    _pre_draft_orders(context)
    for key, typ in HOOK_CONTEXTS[hook].items():
        _require(context, key, typ, "context.")
    for key, typ in OPTIONAL_CONTEXT.items():
        if context.get(key) is not None:
            _require(context, key, typ, "context.")
    if "draftOrders" in HOOK_CONTEXTS[hook]:
        _validate_draft_orders(context["draftOrders"])
    if "selections" in HOOK_CONTEXTS[hook]:
        _validate_selections(context["selections"], context["draftOrders"])
    prefetch = _prefetch(body, deviations)
    extension = body.get("extension")
    if extension is not None and not isinstance(extension, dict):
        raise BadRequest("extension must be an object", expression="extension")
    req = CDSRequest(hook=hook, hook_instance=hook_instance, context=context, fhir_server=fhir_server,
                     fhir_authorization=auth, prefetch=prefetch, extension=extension, deviations=deviations)
    report(req)
    return req
