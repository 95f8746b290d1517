"""Minimal FHIR R4 REST reader for prefetch fallback: bearer auth, connect and
read timeouts bounded by a request deadline, a response size cap, and
``link.next`` paging that stays on the same server and stops at a page cap. Every URL it
fetches (a query or a next page) is checked first (egress.Policy.check_fetch): under the base,
no dot segment or backslash, on the allowlist when one is set; the bearer token goes nowhere else."""
from __future__ import annotations

import time
from typing import Any

import orjson
import requests
from requests.adapters import HTTPAdapter

from . import egress
from .egress import Refused
from .errors import FHIRError

ACCEPT = "application/fhir+json, application/json;q=0.9"


class BodyLimit(Exception):
    """A response body broke its size or time limit while being read."""


def read_capped(resp: requests.Response, max_bytes: int, deadline: float | None = None) -> bytes:
    """Read a streamed body, stopping as soon as it exceeds ``max_bytes`` or the deadline passes."""
    body = bytearray()
    for chunk in resp.iter_content(64 * 1024):
        body.extend(chunk)
        if len(body) > max_bytes:
            raise BodyLimit(f"response larger than {max_bytes} bytes")
        if deadline is not None and time.monotonic() > deadline:
            raise BodyLimit("response not complete before the request deadline")
    return bytes(body)


def new_session(pool_size: int = 32) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=8, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class FHIRClient:
    def __init__(self, base_url: str, access_token: str | None, policy: egress.Policy, *,
                 connect_timeout: float, read_timeout: float, deadline: float,
                 max_pages: int, max_bytes: int, ca_bundle: str = ""):
        """A reader of ``base_url`` (fhirServer, already checked by ``policy.check``) through the
        policy's guarded session (egress.session); certificates are checked against ``ca_bundle``
        (a PEM file) when given, else the bundled CA set."""
        self.base_url = base_url.rstrip("/")
        self._policy = policy
        self._headers = {"Accept": ACCEPT}
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"
        self._session = egress.session(policy)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._max_pages = max_pages
        self._max_bytes = max_bytes
        self._verify: str | bool = ca_bundle or True

    def url_for(self, relative: str) -> str:
        return f"{self.base_url}/{relative.lstrip('/')}"

    def _get(self, url: str) -> dict[str, Any]:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise FHIRError("the request deadline passed before the FHIR query could start")
        timeout = (min(self._connect_timeout, remaining), min(self._read_timeout, remaining))
        try:
            self._policy.check_fetch(url, self.base_url)
            with self._session.get(url, headers=self._headers, timeout=timeout, stream=True,
                                   allow_redirects=False, verify=self._verify) as resp:
                if resp.status_code in (401, 403):
                    raise FHIRError(f"FHIR server refused access ({resp.status_code})", resp.status_code)
                if resp.status_code == 404:
                    raise FHIRError("FHIR server answered 404 Not Found", 404)
                if resp.status_code >= 300:
                    raise FHIRError(f"FHIR server answered {resp.status_code}", resp.status_code)
                try:
                    body = read_capped(resp, self._max_bytes, self._deadline)
                except BodyLimit as exc:
                    raise FHIRError(f"FHIR {exc}") from None
        except Refused as exc:  # a URL off fhirServer, or its host's addresses changed (egress.py)
            raise FHIRError(str(exc)) from None
        except requests.Timeout:
            raise FHIRError("FHIR server timed out") from None
        except requests.RequestException as exc:
            raise FHIRError(f"FHIR server unreachable ({type(exc).__name__})") from None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise FHIRError("FHIR server sent a body that is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FHIRError("FHIR server sent JSON that is not a FHIR resource")
        return data

    def read(self, relative: str) -> tuple[dict[str, Any], list[str], str | None]:
        """GET a read or search; a searchset's following pages are merged into it. Returns the
        resource, notes, and why the search was cut short (None when every page was read)."""
        first = self._get(self.url_for(relative))
        if first.get("resourceType") != "Bundle":
            return first, [], None
        return self._pages(first, {self.url_for(relative)}, 1)

    def read_next(self, url: str) -> tuple[dict[str, Any], list[str], str | None]:
        """The pages after a searchset page (a prefetched one) whose next link is ``url``: a
        Bundle of their entries, notes, and why they were cut short (None when all were read)."""
        stub = {"resourceType": "Bundle", "type": "searchset", "entry": [],
                "link": [{"relation": "next", "url": url}]}
        return self._pages(stub, set(), 0)

    def _pages(self, first: dict[str, Any], seen: set[str], pages: int) -> tuple[dict[str, Any], list[str], str | None]:
        """``first`` with the entries of the pages its next links lead to, on this server, up to the cap."""
        notes: list[str] = []
        entries = list(first.get("entry") or [])
        page = first
        cut: str | None = None
        while True:
            nxt = next((link.get("url") for link in page.get("link") or [] if isinstance(link, dict)
                        and link.get("relation") == "next" and isinstance(link.get("url"), str)), None)
            if not nxt:
                break
            if nxt in seen:
                cut = "a FHIR search returned a paging loop; stopped following it"
                break
            try:
                self._policy.check_fetch(nxt, self.base_url)
            except Refused as exc:
                cut = f"a FHIR search's next page was not followed: {exc}"
                break
            if pages >= self._max_pages:
                cut = f"a FHIR search had more than {self._max_pages} pages; the rest was not read"
                break
            seen.add(nxt)
            try:
                page = self._get(nxt)
            except FHIRError as exc:
                cut = f"a later page of a FHIR search failed ({exc.reason}); the pages read were used"
                break
            pages += 1
            more = page.get("entry")
            entries.extend(more if isinstance(more, list) else [])
        if cut:
            notes.append(cut)
        merged = dict(first)
        merged["entry"] = entries
        merged.pop("link", None)
        return merged, notes, cut
