"""Repeat suppression at order-sign: a card shown at order-select for a draft and
overridden by the clinician is not shown again when that draft is signed, within
CDS_SUPPRESS_REPEATS_HOURS (24) of the order-select card, unless it changed.

A signing card matches an order-select card of the issued-card log
(cds_service.storage_issued) when both are about the same patient (hash of JWT
issuer, fhirServer and patient id), the same one draft order with the same
content (its hash: a dose or medication changed at signing is another order),
the same rule, and the same card (summary, indicator, then the whole card JSON
without uuids: detail, suggestions, links), and feedback with outcome
"overridden" was received for the order-select card (by any replica sharing the
database). Any difference shows the card; explain names the first one. A card
that is not about one draft (no delete suggestion naming one, and several
drafts) is shown. Patient-view and order-select cards are never suppressed.

Cost: no lookup for other hooks, for an answer without cards, when
CDS_RECORD_CARDS is off (there is no log), or when no card is about one draft;
else one indexed query (issued_cards_repeat) joined with the feedback table, and
the draft and card hashes only when it returned a row. When it cannot be read
the cards are shown (fail open): a warning is logged and
``mgcds_repeat_check_failed_total`` counts it."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Collection, NamedTuple

from prometheus_client import Counter
from sqlalchemy import Select, and_, bindparam, select

from . import logs
from .cards import INDICATORS, Card
from .request import CDSRequest
from .storage import feedback, issued_cards
from .storage_issued import (
    content_hash,
    draft_hashes,
    instant_text,
    one_draft,
    patient_hash,
    request_drafts,
    summary_hash,
)
from .storage_store import Store

HOOK = "order-sign"
SUPPRESSED = Counter("mgcds_suppressed_cards_total",
                     "Cards left out at order-sign: shown at order-select for the same draft and overridden",
                     ["service", "rule"])
CHECK_FAILED = Counter("mgcds_repeat_check_failed_total",
                       "Order-sign answers given without the repeat check: the issued-card log could not be read",
                       ["service"])
LIMIT = 200  # order-select cards read per order-sign at most (the newest)


class Shown(NamedTuple):
    """An overridden order-select card of the log."""
    card_uuid: str
    rule_id: str
    draft_order_id: str
    indicator: str
    summary_hash: str | None
    content_hash: str | None
    draft_hash: str | None
    issued_at: str
    outcome_timestamp: str  # the override's outcomeTimestamp, as the EHR sent it (not when it was received)


@dataclass(frozen=True)
class Decision:
    """Why a card is shown or left out (explain, the log)."""
    rule_id: str | None
    suppressed: bool
    reason: str
    draft_order_id: str | None = None
    select_card: str | None = None  # the order-select card's uuid
    override_outcome_timestamp: str | None = None  # the feedback item's outcomeTimestamp

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Outcome:
    cards: list[Card]  # the cards to answer with
    decisions: list[Decision] = field(default_factory=list)  # one per card considered
    error: str | None = None  # why the log could not be read (the cards are all shown)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"decisions": [d.to_json() for d in self.decisions]}
        if self.error:
            out["error"] = self.error
        return out


def _rank(indicator: str) -> int:
    return INDICATORS.index(indicator) if indicator in INDICATORS else -1


@lru_cache(maxsize=64)
def statement(services: int, drafts: int, rules: int) -> Select:
    """A patient's order-select cards for some drafts and rules, issued since an instant and overridden
    (index issued_cards_repeat, then feedback_item per card). One per shape (how many services, drafts,
    rules), built once: building it, or expanding IN lists per call, costs more than running it."""
    ic = issued_cards.c

    def among(column: Any, prefix: str, n: int) -> Any:
        return column.in_([bindparam(f"{prefix}{i}", type_=column.type) for i in range(n)])
    return (select(ic.card_uuid, ic.rule_id, ic.draft_order_id, ic.indicator, ic.summary_hash, ic.content_hash,
                   ic.draft_hash, ic.issued_at, feedback.c.outcome_timestamp)
            .join(feedback, and_(feedback.c.card_uuid == ic.card_uuid, feedback.c.outcome == "overridden"))
            .where(ic.patient_hash == bindparam("patient"), among(ic.service_id, "s", services),
                   among(ic.draft_order_id, "d", drafts), among(ic.rule_id, "r", rules),
                   ic.issued_at >= bindparam("since"))
            .order_by(ic.issued_at.desc()).limit(LIMIT))


def parameters(patient: str, drafts: set[str], rules: set[str], select_services: Collection[str],
               hours: float) -> dict[str, Any]:
    out: dict[str, Any] = {"patient": patient, "since": instant_text(time.time() - hours * 3600)}
    for prefix, values in (("s", select_services), ("d", drafts), ("r", rules)):
        out.update((f"{prefix}{i}", v) for i, v in enumerate(sorted(values)))
    return out


def _lookup(store: Store, patient: str, drafts: set[str], rules: set[str], select_services: Collection[str],
            hours: float) -> list[Shown]:
    query = statement(len(select_services), len(drafts), len(rules))
    values = parameters(patient, drafts, rules, select_services, hours)
    store.flush_for(patient, select_services)  # writes this replica's order-select rows still queued
    with store.transaction(read_only=True) as conn:
        return [Shown(*row) for row in conn.execute(query, values)]


def _decide(card: Card, draft: str, draft_hash: str | None, shown: list[Shown], hours: float) -> Decision:
    """Left out when an overridden order-select card of this draft and rule has the same summary, the
    same indicator, the same draft content and the same card JSON; else the first that differs says why."""
    rule = card.rule_id
    mine = [s for s in shown if s.rule_id == rule and s.draft_order_id == draft]
    if not mine:
        return Decision(rule, False, f"no overridden order-select card for this draft within {hours:g} h", draft)
    same = [s for s in mine if s.summary_hash == summary_hash(card)]
    if not same:
        return Decision(rule, False, "its summary changed since the overridden order-select card", draft,
                        mine[0].card_uuid)
    level = [s for s in same if s.indicator == card.indicator]
    if not level:
        before = same[0]
        change = "rose" if _rank(card.indicator) > _rank(before.indicator) else "changed"
        return Decision(rule, False, f"its indicator {change} from {before.indicator} to {card.indicator} since "
                        "the overridden order-select card", draft, before.card_uuid)
    ordered = [s for s in level if draft_hash is not None and s.draft_hash == draft_hash]
    if not ordered:
        why = ("the overridden order-select card was logged without its draft's content hash (before schema 3)"
               if all(s.draft_hash is None for s in level) else "the draft order's content changed since the "
               "overridden order-select card (medication, dose or any element but id, meta and text)")
        return Decision(rule, False, why, draft, level[0].card_uuid)
    content = content_hash(card)
    for s in ordered:
        if s.content_hash == content:
            return Decision(rule, True, f"shown at order-select at {s.issued_at} and overridden (outcomeTimestamp "
                            f"{s.outcome_timestamp}): same draft order and content, rule and card", draft,
                            s.card_uuid, s.outcome_timestamp)
    return Decision(rule, False, "its detail, suggestions or links changed since the overridden order-select card",
                    draft, ordered[0].card_uuid)


def _unmatched(card: Card) -> Decision:
    return Decision(card.rule_id, False, "not about one draft order (several drafts and no delete naming one)"
                    if card.rule_id else "the card names no rule")


def check(store: Store, hook: str, request: CDSRequest, cards: list[Card], select_services: Collection[str],
          config: dict[str, Any], *, issuer: str) -> Outcome:
    """The cards to answer with, and why each was shown or left out. Only order-sign is checked.
    ``issuer``: the JWT's iss ("" without authentication), part of the patient's hash."""
    if hook != HOOK or not cards:
        return Outcome(cards)
    if not config["CDS_SUPPRESS_REPEATS"]:
        return Outcome(cards, [Decision(c.rule_id, False, "CDS_SUPPRESS_REPEATS is off") for c in cards])
    if not config["CDS_RECORD_CARDS"]:
        return Outcome(cards, [Decision(c.rule_id, False, "CDS_RECORD_CARDS is off: there is no issued-card log "
                                        "to match") for c in cards])
    patient, drafts = patient_hash(request, store.patient_key, issuer), request_drafts(request)
    if patient is None or not select_services:
        return Outcome(cards, [Decision(c.rule_id, False, "no patient or order-select service to match")
                               for c in cards])
    about = {id(c): one_draft(drafts, c) if c.rule_id else None for c in cards}
    wanted = {d for d in about.values() if d}
    if not wanted:  # known without the database: nothing can match
        return Outcome(cards, [_unmatched(c) for c in cards])
    hours = float(config["CDS_SUPPRESS_REPEATS_HOURS"])
    try:
        shown = _lookup(store, patient, wanted, {c.rule_id for c in cards if c.rule_id}, select_services, hours)
    except Exception as exc:  # any failure of the log shows the cards (fail open)
        error = type(getattr(exc, "orig", None) or exc).__name__
        return Outcome(cards, [Decision(c.rule_id, False, "the issued-card log could not be read: shown (fail open)",
                                        about[id(c)]) for c in cards], error)
    hashes = draft_hashes(request) if shown else {}  # only when a card can match
    decisions = [_decide(c, draft, hashes.get(draft), shown, hours) if (draft := about[id(c)]) else _unmatched(c)
                 for c in cards]
    return Outcome([c for c, d in zip(cards, decisions) if not d.suppressed], decisions)


def record(outcome: Outcome, service_id: str, request_id: str | None) -> None:
    """The metrics and log lines of an answer's check (rule ids and card uuids: no patient data)."""
    if outcome.error:
        CHECK_FAILED.labels(service_id).inc()
        logs.log(logging.WARNING, "repeat_check_unavailable", request_id=request_id, service_id=service_id,
                 error=outcome.error)
    left_out = [d for d in outcome.decisions if d.suppressed]
    for d in left_out:
        SUPPRESSED.labels(service_id, d.rule_id or "").inc()
    if left_out:
        logs.log(logging.INFO, "cards_suppressed", request_id=request_id, service_id=service_id,
                 rules=[d.rule_id for d in left_out], select_cards=[d.select_card for d in left_out])
