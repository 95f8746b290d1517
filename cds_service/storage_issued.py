"""Rows of the issued-card log: what repeat suppression at order-sign needs to
know that a card was already shown (the same rule, patient, draft order and
content), without storing the patient's id, the draft or the card's text.

* ``patient_hash``: HMAC-SHA256 of the JSON array ["<JWT iss>", "<fhirServer>",
  "Patient/<id>"] keyed with CDS_PATIENT_HASH_KEY (unkeyed SHA-256 when no key is set: set one in
  production, a patient id is guessable from its plain hash). The issuer is empty
  when authentication is off, fhirServer when the request has none: the issuer
  tells apart two EHRs that send only prefetch and share a database.
* ``draft_order_id``: the draft order ("MedicationRequest/abc") a card's delete
  suggestion names, else the selected draft orders (order-select), else every
  draft order of the request, comma-separated; empty for patient-view.
* ``draft_hash``: when the card is about one draft order, SHA-256 of that draft's
  content (``draft_hashes``): a draft signed with another dose or medication is
  not the draft whose card was overridden.
* ``content_hash``: SHA-256 of the card's JSON with its uuids taken out, so a
  card that says the same thing again has the same hash.
* ``summary_hash``: SHA-256 of the card's summary (with the indicator, it says
  which part of a card changed when the content hash differs)."""
from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, NamedTuple

import orjson

from .cards import Card
from .jsonbytes import dumps
from .request import CDSRequest


class Issued(NamedTuple):
    """A card waiting to be written: small (no reference to the request and its prefetch)."""
    service_id: str
    card_uuid: str
    rule_id: str | None
    issued_at: float  # time.time(): formatted when written, not on the answer's path
    patient_hash: str | None = None
    drafts: tuple[str, ...] = ()
    card: Card | None = None
    draft_hash: str | None = None

    def row(self) -> dict[str, Any]:
        card = self.card
        return {"card_uuid": self.card_uuid, "service_id": self.service_id, "rule_id": self.rule_id,
                "issued_at": instant_text(self.issued_at), "patient_hash": self.patient_hash,
                "indicator": card.indicator if card else None,
                "draft_order_id": draft_order_id(self.drafts, card) if card else None,
                "content_hash": content_hash(card) if card else None,
                "summary_hash": summary_hash(card) if card else None, "draft_hash": self.draft_hash}


def issued(service_id: str, request: CDSRequest, cards: Iterable[Card], key: bytes, issuer: str) -> list[Issued]:
    """The rows for one answer. The draft hashes are made now (a row keeps no reference to the
    request); the hashes that need the card's JSON are made when written."""
    at, patient, drafts = time.time(), patient_hash(request, key, issuer), request_drafts(request)
    hashes: dict[str, str | None] | None = None  # made for the first card about one draft
    rows = []
    for c in cards:
        if c.uuid:
            draft = one_draft(drafts, c)
            if draft and hashes is None:
                hashes = draft_hashes(request)
            rows.append(Issued(service_id, c.uuid, c.rule_id, at, patient, drafts, c,
                               hashes.get(draft) if draft and hashes else None))
        # a folded suggestion: its uuid names its own rule, so accepting it is attributed there
        rows += [Issued(service_id, s.uuid, s.rule_id, at, patient, drafts) for s in c.suggestions
                 if s.uuid and s.rule_id and s.rule_id != c.rule_id]
    return rows


def patient_hash(request: CDSRequest, key: bytes, issuer: str = "") -> str | None:
    """The patient of the log: ``issuer`` is the JWT's iss ("" when authentication is off)."""
    patient = request.context.get("patientId")
    if not isinstance(patient, str):
        return None
    reference = orjson.dumps([issuer, request.fhir_server or "", f"Patient/{patient}"])  # unambiguous
    if key:
        return hmac.new(key, reference, hashlib.sha256).hexdigest()
    return hashlib.sha256(reference).hexdigest()


def _reference(resource: dict) -> str:
    return f"{resource.get('resourceType')}/{resource['id']}"


def request_drafts(request: CDSRequest) -> tuple[str, ...]:
    selections = request.context.get("selections")
    if isinstance(selections, list) and selections:
        return tuple(sorted(s for s in selections if isinstance(s, str)))
    return tuple(sorted(_reference(r) for r in request.draft_resources() if r.get("id")))


# Left out of a draft's hash: its id (matched on its own), meta (versionId, lastUpdated: they change on
# every save) and its narrative text (made from the rest). Everything else counts, extensions included.
NOT_HASHED = frozenset({"id", "meta", "text"})


def _references(value: Any) -> Iterator[str]:
    """Every ``reference`` string in a resource, at any depth: walked with an explicit stack (a draft
    nested thousands deep is data, not a RecursionError)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if k == "reference" and isinstance(v, str):
                    yield v
                else:
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(item)


def draft_hashes(request: CDSRequest) -> dict[str, str | None]:
    """Draft order reference -> SHA-256 of its content as received: the resource without NOT_HASHED,
    with the draftOrders resources it references (Epic's Medication beside its order) taken in the same
    way, as sorted-key JSON. None for a draft that cannot be serialised (an integer past 64 bits): its
    cards match nothing."""
    resources = {_reference(r): r for r in request.draft_resources() if r.get("id")}
    out: dict[str, str | None] = {}
    for ref, resource in resources.items():
        linked = sorted(set(_references(resource)) & resources.keys() - {ref})
        content = [{k: v for k, v in r.items() if k not in NOT_HASHED}
                   for r in [resource, *(resources[x] for x in linked)]]
        try:
            out[ref] = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()
        except orjson.JSONEncodeError:
            out[ref] = None
    return out


def draft_order_id(drafts: tuple[str, ...], card: Card) -> str | None:
    named = sorted({a.resourceId for s in card.suggestions for a in s.actions
                    if a.type == "delete" and a.resourceId in drafts})
    chosen = named or drafts
    return ",".join(chosen) if chosen else None


def one_draft(drafts: tuple[str, ...], card: Card) -> str | None:
    """The one draft order a card is about: the draft its delete suggestions name, else the request's
    only draft; None when that cannot be told (several drafts, or deletes naming several)."""
    named = draft_order_id(drafts, card)
    return named if named and "," not in named else None


def _without_uuids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_uuids(v) for k, v in value.items() if k != "uuid"}
    if isinstance(value, list):
        return [_without_uuids(v) for v in value]
    return value


def content_hash(card: Card) -> str:
    return hashlib.sha256(dumps(_without_uuids(card.to_json()), sort_keys=True)).hexdigest()


def summary_hash(card: Card) -> str:
    return hashlib.sha256(card.summary.encode()).hexdigest()


def instant_text(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_text() -> str:
    return instant_text(time.time())
