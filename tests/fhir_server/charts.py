"""Charts for the test FHIR server: scenario requests given their own ids (so that many share
one server), the resources a server would hold for a prefetch, and the CDS client that calls
the services without prefetch."""
from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Iterator

from cds_service import create_app

from ..conftest import NOW


def authorization(token: str) -> dict[str, Any]:
    """fhirAuthorization carrying ``token``."""
    return {"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": "patient/*.read",
            "subject": "mg-cds"}


def _resources(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The top-level resources of a request: prefetch values and their Bundle entries, draft orders."""
    bundles = [*(body.get("prefetch") or {}).values(), body.get("context", {}).get("draftOrders")]
    for value in bundles:
        if not isinstance(value, dict):
            continue
        if value.get("resourceType") != "Bundle":
            yield value
            continue
        for entry in value.get("entry") or []:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield entry["resource"]


def with_own_ids(body: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A copy of the request whose patient and resources carry ids starting with ``prefix``, and
    whose references, selections and patientId follow, so that all scenarios share one server."""
    body = json.loads(json.dumps(body))
    known = {f"{r['resourceType']}/{r['id']}" for r in _resources(body) if isinstance(r.get("id"), str)}
    known.add(f"Patient/{body['context']['patientId']}")

    def renamed(reference: str) -> str:
        rtype, _, rid = reference.partition("/")
        return f"{rtype}/{prefix}{rid}"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return renamed(node) if isinstance(node, str) and node in known else node

    body = walk(body)
    for resource in _resources(body):
        if isinstance(resource.get("id"), str) and f"{resource['resourceType']}/{resource['id']}" in known:
            resource["id"] = f"{prefix}{resource['id']}"
    body["context"]["patientId"] = f"{prefix}{body['context']['patientId']}"
    return body


def chart(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What a FHIR server would hold for the prefetch: its resources, without search outcomes."""
    held = _resources({"prefetch": body.get("prefetch") or {}, "context": {}})
    return [r for r in held if r.get("resourceType") != "OperationOutcome" and isinstance(r.get("id"), str)]


def without_prefetch(body: dict[str, Any], base: str, token: str) -> dict[str, Any]:
    """The request with no prefetch, pointing at ``base`` (with ``token``) for everything."""
    request = {k: v for k, v in body.items() if k != "prefetch"}
    return {**request, "fhirServer": base, "fhirAuthorization": authorization(token)}


def as_served(body: dict[str, Any], base: str, token: str) -> dict[str, Any]:
    """The request as it would be with the server's data: prefetch Bundles lose any claim to
    more results than they hold (``total``, paging links), since the server holds exactly their
    entries and answers complete searches; a request's own fhirServer becomes ``base``."""
    body = json.loads(json.dumps(body))
    for value in (body.get("prefetch") or {}).values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            value.pop("total", None)
            value.pop("link", None)
    if "fhirServer" in body:
        body["fhirServer"] = base
        body["fhirAuthorization"] = authorization(token)
    return body


def card_keys(resp) -> list[tuple[str, str, str]]:
    """(rule id, indicator, summary) of each card, in order."""
    assert resp.status_code == 200, resp.get_json()
    return [(c["source"]["topic"]["code"], c["indicator"], c["summary"]) for c in resp.get_json()["cards"]]


def cds_client(base: str, **config: Any):
    """A test client of the service, allowed to fetch from ``base``; ``config`` overrides settings."""
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW,
                      "CDS_LOG_LEVEL": "ERROR", "CDS_ALLOWED_FHIR_SERVERS": base, **config})
    return app.test_client()


def heart_rates(patient_id: str, count: int, first: datetime, step: timedelta) -> list[dict[str, Any]]:
    """``count`` final heart-rate Observations (LOINC 8867-4) from ``first``, one every ``step``:
    the vital signs that fill an ICU chart."""
    return [{"resourceType": "Observation", "id": f"{patient_id}-hr-{i}", "status": "final",
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                       "code": "vital-signs"}]}],
             "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
             "subject": {"reference": f"Patient/{patient_id}"},
             "effectiveDateTime": (first + i * step).strftime("%Y-%m-%dT%H:%M:%SZ"),
             "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org",
                               "code": "/min"}}
            for i in range(count)]
