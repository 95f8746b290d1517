"""Prefetch completion: render templates, fetch absent keys from fhirServer
concurrently under one deadline, and decide between degrading and 412."""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import requests

from .config import allowed_fhir_servers
from .errors import FHIRError, PreconditionFailed
from .fhir_client import FHIRClient
from .request import CDSRequest
from .service import ServiceDefinition

TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
USER_TOKENS = {"Practitioner": "userPractitionerId", "PractitionerRole": "userPractitionerRoleId",
               "Patient": "userPatientId", "RelatedPerson": "userRelatedPersonId"}
READ_TEMPLATE = re.compile(r"^([A-Z][A-Za-z]+)/([^/?]+)$")


class TemplateError(ValueError):
    pass


def template_values(context: dict[str, Any]) -> dict[str, str]:
    """Token -> value for {{context.*}} (scalar fields) and the user tokens."""
    values = {f"context.{k}": str(v) for k, v in context.items() if isinstance(v, (str, int, float))}
    user = context.get("userId")
    if isinstance(user, str) and "/" in user:
        rtype, _, rid = user.partition("/")
        if rtype in USER_TOKENS:
            values[USER_TOKENS[rtype]] = rid
    return values


def render(template: str, values: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        token = match.group(1)
        if token not in values:
            raise TemplateError(f"token {{{{{token}}}}} has no value in this request")
        return values[token]
    return TOKEN.sub(sub, template)


@dataclass
class PrefetchResult:
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    fetched_keys: list[str] = field(default_factory=list)
    failed_fetches: list[str] = field(default_factory=list)

    @property
    def fetched(self) -> int:
        return len(self.fetched_keys)


def _already_present(query: str, prefetch: dict[str, Any]) -> bool:
    """A read template (Patient/123) is satisfied by that resource under any key."""
    m = READ_TEMPLATE.match(query)
    if not m:
        return False
    rtype, rid = m.groups()
    return any(isinstance(v, dict) and v.get("resourceType") == rtype and v.get("id") == rid
               for v in prefetch.values())


def _server_allowed(url: str, allowlist: list[str]) -> bool:
    if not allowlist:
        return True
    url = url.rstrip("/")
    return any(url == p or url.startswith(p + "/") for p in allowlist)


def complete_prefetch(req: CDSRequest, service: ServiceDefinition, config: dict,
                      session: requests.Session) -> PrefetchResult:
    result = PrefetchResult(data=dict(req.prefetch))
    values = template_values(req.context)
    to_fetch: dict[str, str] = {}
    for key, template in service.prefetch.items():
        if key in req.prefetch:
            continue  # present, or null meaning "no data": never fetched
        try:
            query = render(template, values)
        except TemplateError as exc:
            result.unavailable[key] = str(exc)
            continue
        if _already_present(query, req.prefetch):
            continue
        if not req.fhir_server:
            result.unavailable[key] = "not prefetched and the request has no fhirServer"
        elif not _server_allowed(req.fhir_server, allowed_fhir_servers(config)):
            result.unavailable[key] = "fhirServer is not on this service's allowlist"
        else:
            to_fetch[key] = query
    if to_fetch:
        _fetch_all(req, to_fetch, config, session, result)
    missing_required = {k: v for k, v in result.unavailable.items() if k in service.required_prefetch}
    if missing_required:
        reasons = "; ".join(f"'{k}': {v}" for k, v in sorted(missing_required.items()))
        raise PreconditionFailed(
            f"Cannot evaluate {service.id}: the patient's data could be neither prefetched nor fetched ({reasons}).",
            diagnostics="Prefetch the keys listed in discovery, or send fhirServer and fhirAuthorization.",
            expression=f"prefetch.{sorted(missing_required)[0]}")
    for key, reason in sorted(result.unavailable.items()):
        result.notes.append(f"'{key}' data unavailable: {reason}")
    return result


def _fetch_all(req: CDSRequest, queries: dict[str, str], config: dict, session: requests.Session,
               result: PrefetchResult) -> None:
    deadline = time.monotonic() + float(config["CDS_DEADLINE_SECONDS"])
    client = FHIRClient(req.fhir_server or "", req.access_token, session,
                        connect_timeout=float(config["CDS_FHIR_CONNECT_TIMEOUT"]),
                        read_timeout=float(config["CDS_FHIR_READ_TIMEOUT"]), deadline=deadline,
                        max_pages=int(config["CDS_FHIR_MAX_PAGES"]),
                        max_bytes=int(config["CDS_FHIR_MAX_RESPONSE_BYTES"]))
    pool = ThreadPoolExecutor(max_workers=min(8, len(queries)), thread_name_prefix="fhir")
    try:
        futures = {pool.submit(client.read, q): key for key, q in queries.items()}
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        for fut in done:
            key = futures[fut]
            try:
                resource, notes = fut.result()
            except FHIRError as exc:
                result.unavailable[key] = exc.reason
                result.failed_fetches.append(key)
                continue
            result.data[key] = resource
            result.notes.extend(notes)
            result.fetched_keys.append(key)
        for fut in pending:
            result.unavailable[futures[fut]] = "FHIR query exceeded the request deadline"
            result.failed_fetches.append(futures[fut])
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
