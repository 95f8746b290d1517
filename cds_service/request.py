"""Parsing and validation of a CDS Hooks 2.0 service request."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import BadRequest

# Context fields each hook requires, and their JSON types (CDS Hooks library,
# patient-view 1.0, order-select 1.0, order-sign 1.0).
HOOK_CONTEXTS: dict[str, dict[str, type]] = {
    "patient-view": {"userId": str, "patientId": str},
    "order-select": {"userId": str, "patientId": str, "selections": list, "draftOrders": dict},
    "order-sign": {"userId": str, "patientId": str, "draftOrders": dict},
}
OPTIONAL_CONTEXT: dict[str, type] = {"encounterId": str}
FHIR_AUTHORIZATION_FIELDS: dict[str, type] = {
    "access_token": str, "token_type": str, "expires_in": int, "scope": str, "subject": str,
}
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
    if typ is str and not value.strip():
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
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest("fhirServer must be an absolute http(s) URL", expression="fhirServer")


def parse_request(body: Any, expected_hook: str) -> CDSRequest:
    """Validate a decoded request body for a service of hook ``expected_hook``."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    hook = _require(body, "hook", str, "")
    if hook != expected_hook:
        raise BadRequest(f"hook '{hook}' does not match this service, which answers '{expected_hook}'",
                         expression="hook")
    hook_instance = _require(body, "hookInstance", str, "")
    fhir_server = body.get("fhirServer")
    if fhir_server is not None:
        _require(body, "fhirServer", str, "")
        _validate_fhir_server(fhir_server)
    auth = body.get("fhirAuthorization")
    if auth is not None:
        if not isinstance(auth, dict):
            raise BadRequest("fhirAuthorization must be an object", expression="fhirAuthorization")
        for key, typ in FHIR_AUTHORIZATION_FIELDS.items():
            _require(auth, key, typ, "fhirAuthorization.")
        if auth["token_type"] != "Bearer":
            raise BadRequest("fhirAuthorization.token_type must be 'Bearer'", expression="fhirAuthorization.token_type")
        if fhir_server is None:
            raise BadRequest("fhirAuthorization is given without fhirServer", expression="fhirServer")
    context = _require(body, "context", dict, "")
    for key, typ in HOOK_CONTEXTS[hook].items():
        _require(context, key, typ, "context.")
    for key, typ in OPTIONAL_CONTEXT.items():
        if context.get(key) is not None:
            _require(context, key, typ, "context.")
    if "draftOrders" in HOOK_CONTEXTS[hook]:
        _validate_draft_orders(context["draftOrders"])
    if "selections" in HOOK_CONTEXTS[hook]:
        _validate_selections(context["selections"], context["draftOrders"])
    prefetch = body.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise BadRequest("prefetch must be an object", expression="prefetch")
    extension = body.get("extension")
    if extension is not None and not isinstance(extension, dict):
        raise BadRequest("extension must be an object", expression="extension")
    return CDSRequest(hook=hook, hook_instance=hook_instance, context=context, fhir_server=fhir_server,
                      fhir_authorization=auth, prefetch=prefetch, extension=extension)
