"""Prefetch completion: render templates, fetch absent keys from fhirServer
concurrently under one deadline, judge what arrived, and decide between
degrading and 412.

What arrived is judged by resource type, whatever key it came under (an EHR may
prefetch under its own keys, e.g. PDDI-CDS's ``item1``..``item6``). A type is
*proven complete* only by one of the service's own full searches (not a subset
search such as a code-filtered ``labs``) that arrived whole: prefetched or fetched,
and not cut short (a ``link.next`` not followed, a ``total`` above what arrived,
the page cap, the deadline). A type whose resources arrived otherwise is read but
reported ``incomplete``: it can show a result, never prove one absent."""
from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from operator import attrgetter
from typing import Any, Callable

from urllib3.util import parse_url

from . import egress, logs
from .errors import FHIRError, PreconditionFailed
from .fhir_client import FHIRClient
from .pool import field_of as _get
from .pool import resources_in, types_in
from .request import FHIR_ID, CDSRequest
from .service import ServiceDefinition

TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
USER_TOKENS = {"Practitioner": "userPractitionerId", "PractitionerRole": "userPractitionerRoleId",
               "Patient": "userPatientId", "RelatedPerson": "userRelatedPersonId"}
READ_TEMPLATE = re.compile(r"^([A-Z][A-Za-z]+)/([^/?]+)$")
TEMPLATE_TYPE = re.compile(r"^([A-Z][A-Za-z]+)")
# a literal reference to a Medication, relative or absolute, optionally versioned
MEDICATION_REF = re.compile(r"(?:^|/)(Medication/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
DRAFT_MEDICATIONS = "draftOrders.Medication"
NEXT_PAGES = ".next"  # suffix of the result key holding a prefetched search's following pages
_ENTRY_TYPE = attrgetter("resource.resourceType")  # the result key of Medications read for drafted orders


class TemplateError(ValueError):
    pass


def template_values(context: dict[str, Any]) -> dict[str, str]:
    """Token -> value for {{context.*}} (scalar fields) and the user tokens. Only a value that is a
    FHIR id is given: anything else ("../admin", "a/b?x") could change the path a rendered query
    reaches, so a template naming it has no value (its key is unavailable)."""
    values = {f"context.{k}": str(v) for k, v in context.items()
              if isinstance(v, (str, int, float)) and FHIR_ID.fullmatch(str(v))}
    user = context.get("userId")
    if isinstance(user, str) and "/" in user:
        rtype, _, rid = user.partition("/")
        if rtype in USER_TOKENS and FHIR_ID.fullmatch(rid):
            values[USER_TOKENS[rtype]] = rid
    return values


def render(template: str, values: dict[str, str]) -> str:
    def sub(match: re.Match) -> str:
        token = match.group(1)
        if token not in values:
            raise TemplateError(f"token {{{{{token}}}}} has no value in this request")
        return values[token]
    return TOKEN.sub(sub, template)


def template_type(template: str) -> str:
    """The resource type a read or search template asks for ("" when it names none)."""
    m = TEMPLATE_TYPE.match(template)
    return m.group(1) if m else ""


@lru_cache(maxsize=64)
def _template_types(templates: tuple[tuple[str, str], ...]) -> dict[str, str]:
    return {key: template_type(t) for key, t in templates}


@dataclass
class PrefetchResult:
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    fetched_keys: list[str] = field(default_factory=list)
    failed_fetches: list[str] = field(default_factory=list)
    # resource type -> why its data is not proven complete
    incomplete: dict[str, str] = field(default_factory=dict)

    @property
    def fetched(self) -> int:
        return len(self.fetched_keys)


def cut_short(value: Any, rtype: str) -> str | None:
    """Why a search result under one key may not hold all its matches, or None: a Bundle with a
    next page, or whose ``total`` is above the matches (entries of the searched type) it holds."""
    if _get(value, "resourceType") != "Bundle":
        return None
    if next_link(value):
        return "its search result has a next page (link.next) that was not read"
    total = _get(value, "total")
    if isinstance(total, int) and not isinstance(total, bool) and total > 0:
        entries = _get(value, "entry")
        entries = entries if isinstance(entries, list) else []
        if total > len(entries):
            return f"its search result says {total} matched but {len(entries)} arrived"
        if type(value).__dict__.get("resource_types") == {rtype}:
            return None  # decoded typed with one model: every entry a match, or an OperationOutcome (rare)
        try:  # decoded typed, every entry has a resource: counted in C (this runs for every prefetched search)
            matches = list(map(_ENTRY_TYPE, entries)).count(rtype)
        except AttributeError:
            matches = sum(1 for e in entries if _get(_get(e, "resource"), "resourceType") == rtype)
        if total > matches:
            return f"its search result says {total} matched but {matches} arrived"
    return None


def next_link(value: Any) -> str | None:
    """The next-page URL of a searchset page, or None."""
    links = _get(value, "link") if _get(value, "resourceType") == "Bundle" else None
    if not isinstance(links, list):
        return None
    return next((url for link in links if link is not None and _get(link, "relation") == "next"
                 for url in [_get(link, "url")] if isinstance(url, str)), None)


def _already_present(query: str, prefetch: dict[str, Any]) -> bool:
    """A read template (Patient/123) is satisfied by that resource under any key."""
    m = READ_TEMPLATE.match(query)
    if not m:
        return False
    rtype, rid = m.groups()
    if any(isinstance(v, dict) and v.get("resourceType") == rtype and v.get("id") == rid for v in prefetch.values()):
        return True
    return any(_get(r, "resourceType") == rtype and _get(r, "id") == rid
               for v in prefetch.values() for r in resources_in(v))


def unresolved_draft_medications(req: CDSRequest, resolvable: Callable[[str], bool]) -> list[str]:
    """"Medication/id" references of drafted MedicationRequests that no resource in the request
    resolves (Epic before February 2024 sends only the reference, often with a display)."""
    refs: list[str] = []
    for draft in req.draft_resources():
        reference = draft.get("medicationReference") if draft.get("resourceType") == "MedicationRequest" else None
        ref = reference.get("reference") if isinstance(reference, dict) else None
        m = MEDICATION_REF.search(ref) if isinstance(ref, str) else None
        if m and m.group(1) not in refs and not resolvable(m.group(1)):
            refs.append(m.group(1))
    return refs


class _Completion:
    """One request's prefetch completion (see the module docstring)."""

    def __init__(self, req: CDSRequest, service: ServiceDefinition, config: dict):
        self.req, self.service, self.config = req, service, config
        self.result = PrefetchResult(data=dict(req.prefetch))
        self.types = _template_types(tuple(service.prefetch.items()))
        self.proven: set[str] = set()     # types a complete full search holds
        self.cut: dict[str, str] = {}     # key -> why its data may be incomplete
        self.next_pages: dict[str, str] = {}  # prefetched key -> its next page's URL, to be read
        self._held: dict[str, set[str]] | None = None

    def resume(self, key: str) -> None:
        """A prefetched search cut short whose next pages were all read: judged whole."""
        self.cut.pop(key, None)
        if self._full(key):
            self.proven.add(self.types[key])

    def _full(self, key: str) -> bool:
        return key not in self.service.partial_prefetch

    def judge(self, key: str, value: Any, why: str | None = None) -> None:
        """Record what one of the service's keys brought: proof of its type, or why not."""
        why = why or cut_short(value, self.types[key])
        if why:
            self.cut[key] = why
        elif self._full(key):
            self.proven.add(self.types[key])

    def queries(self) -> dict[str, str]:
        """The service's absent keys to fetch, key -> rendered query; the others judged."""
        req, result = self.req, self.result
        for key in self.service.prefetch:
            if key in req.prefetch:
                self.judge(key, req.prefetch[key])  # null means "no data": complete
                url = next_link(req.prefetch[key]) if key in self.cut else None
                if url and self.refusal is None:
                    self.next_pages[key] = url  # read from fhirServer (FHIRClient keeps to its base)
        values = template_values(req.context)
        to_fetch: dict[str, str] = {}
        for key, template in self.service.prefetch.items():
            if key in req.prefetch:
                continue  # present, or null meaning "no data": never fetched
            try:
                query = render(template, values)
            except TemplateError as exc:
                result.unavailable[key] = str(exc)
                continue
            if _already_present(query, req.prefetch):
                self.proven.add(self.types[key])
                continue
            if not self._full(key) and self.types[key] in self.proven:
                continue  # a complete full search of its type already holds what it would
            reason = self.refusal
            if reason:
                result.unavailable[key] = reason
            else:
                to_fetch[key] = query
        return to_fetch

    @cached_property
    def refusal(self) -> str | None:
        """Why fhirServer may not be called (egress.py), judged once and only when a fetch is needed."""
        if not self.req.fhir_server:
            return "not prefetched and the request has no fhirServer"
        try:
            egress.policy(self.config).check(self.req.fhir_server, float(self.config["CDS_FHIR_CONNECT_TIMEOUT"]))
        except egress.Refused as exc:
            host = parse_url(self.req.fhir_server).host or ""  # never the URL: it may carry credentials
            logs.log(logging.WARNING, "fhirServer refused", host=host, reason=str(exc))
            return str(exc)
        return None

    def held(self) -> dict[str, set[str]]:
        """Resource type -> the keys its resources arrived under (read only when needed)."""
        if self._held is None:
            self._held = {}
            for key, value in self.result.data.items():
                for rtype in types_in(value):
                    self._held.setdefault(rtype, set()).add(key)
        return self._held

    def finish(self) -> PrefetchResult:
        """Unavailable keys whose type arrived elsewhere become incomplete types; then 412 or notes."""
        result = self.result
        for key in list(result.unavailable):
            rtype = self.types.get(key, "")
            if rtype in self.proven:
                del result.unavailable[key]  # a subset search whose type a complete search holds
                continue
            holders = sorted(self.held().get(rtype, set()) - {key})
            if holders:
                reason = result.unavailable.pop(key)
                result.incomplete.setdefault(
                    rtype, f"'{key}' {reason}; the {rtype} resources read came under "
                           f"{', '.join(repr(h) for h in holders)}")
        for key, why in self.cut.items():
            rtype = self.types[key]
            if rtype not in self.proven:
                result.incomplete.setdefault(rtype, f"'{key}': {why}")
        missing_required = {k: v for k, v in result.unavailable.items() if k in self.service.required_prefetch}
        if missing_required:
            reasons = "; ".join(f"'{k}': {v}" for k, v in sorted(missing_required.items()))
            raise PreconditionFailed(
                f"Cannot evaluate {self.service.id}: the patient's data could be neither prefetched nor fetched "
                f"({reasons}).",
                diagnostics="Prefetch the keys listed in discovery, or send fhirServer and fhirAuthorization.",
                expression=f"prefetch.{sorted(missing_required)[0]}")
        for key, reason in sorted(result.unavailable.items()):
            result.notes.append(f"'{key}' data unavailable: {reason}")
        for rtype, why in sorted(result.incomplete.items()):
            result.notes.append(f"{rtype} data may be incomplete ({why}): a result can be shown, "
                                "never proven absent")
        return result


def complete_prefetch(req: CDSRequest, service: ServiceDefinition, config: dict,
                      resolvable: Callable[[str], bool] | None = None) -> PrefetchResult:
    """Fetch what is absent and judge what arrived. ``resolvable`` says whether a "Type/id"
    reference resolves among the request's resources: a drafted order's Medication that does
    not is read from fhirServer too, inside the same deadline. fhirServer is called only as
    egress.py allows, through its own guarded session."""
    run = _Completion(req, service, config)
    to_fetch = run.queries()
    medications: list[str] = []
    if resolvable is not None and req.fhir_server:
        medications = unresolved_draft_medications(req, resolvable)
    if medications and run.refusal is not None:
        medications = []  # fhirServer may not be called: the drafts keep their unresolved references
    if to_fetch or medications or run.next_pages:
        _fetch_all(req, {**to_fetch, **{ref: ref for ref in medications}}, config, run)
    return run.finish()


def _fetch_all(req: CDSRequest, queries: dict[str, str], config: dict, run: _Completion) -> None:
    result = run.result
    deadline = time.monotonic() + float(config["CDS_DEADLINE_SECONDS"])
    client = FHIRClient(req.fhir_server or "", req.access_token, egress.policy(config),
                        connect_timeout=float(config["CDS_FHIR_CONNECT_TIMEOUT"]),
                        read_timeout=float(config["CDS_FHIR_READ_TIMEOUT"]), deadline=deadline,
                        max_pages=int(config["CDS_FHIR_MAX_PAGES"]),
                        max_bytes=int(config["CDS_FHIR_MAX_RESPONSE_BYTES"]),
                        ca_bundle=str(config["CDS_FHIR_CA_BUNDLE"]))
    pool = ThreadPoolExecutor(max_workers=min(8, len(queries) + len(run.next_pages)), thread_name_prefix="fhir")
    medications: list[dict] = []
    try:
        futures = {pool.submit(client.read, q): key for key, q in queries.items()}
        futures.update({pool.submit(client.read_next, url): f"{key}{NEXT_PAGES}" for key, url in run.next_pages.items()})
        queries = {**queries, **{f"{key}{NEXT_PAGES}": url for key, url in run.next_pages.items()}}
        done, pending = wait(futures, timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        outcomes: dict[str, Any] = {futures[f]: f for f in done}
        outcomes.update({futures[f]: FHIRError("FHIR query exceeded the request deadline") for f in pending})
        for key in queries:  # in template order: notes and data do not depend on thread timing
            outcome = outcomes[key]
            try:
                if isinstance(outcome, FHIRError):
                    raise outcome
                resource, notes, why = outcome.result()
            except FHIRError as exc:
                if key.endswith(NEXT_PAGES):
                    result.notes.append(f"the next pages of '{key[:-len(NEXT_PAGES)]}' could not be read from "
                                        f"fhirServer ({exc.reason}); the page prefetched was used")
                elif key in run.types:
                    result.unavailable[key] = exc.reason
                    result.failed_fetches.append(key)
                else:
                    result.notes.append(f"{key} (a drafted order's medication) could not be read from fhirServer "
                                        f"({exc.reason})")
                continue
            result.notes.extend(notes)
            if key.endswith(NEXT_PAGES):
                result.data[key] = resource
                result.fetched_keys.append(key)
                if why is None:  # every page read: the prefetched search is whole
                    run.resume(key[:-len(NEXT_PAGES)])
                continue
            if key not in run.types:
                if resource.get("resourceType") == "Medication":
                    medications.append(resource)
                continue
            result.data[key] = resource
            result.fetched_keys.append(key)
            run.judge(key, resource, why)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if medications:
        result.data[DRAFT_MEDICATIONS] = {"resourceType": "Bundle", "type": "collection",
                                          "entry": [{"resource": m} for m in medications]}
        result.fetched_keys.append(DRAFT_MEDICATIONS)
