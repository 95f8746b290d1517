"""Feedback (CDS Hooks 2.0 "Feedback" section): validation, and the store of
feedback in the service's database (cds_service.storage: SQLite or PostgreSQL).

A 2xx is sent only after the commit, so acknowledged feedback survives a crash or
restart. The same item (card uuid, outcome, outcomeTimestamp), sent twice or to
two replicas, is stored once. Feedback for a card that any replica issued is
counted under that card's rule (the issued-card log, cds_service.storage_store);
accepting a suggestion folded into another card (patient-view's ``also-due``)
counts for the rule that suggestion came from."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from .errors import BadRequest
from .storage import feedback as feedback_table
from .storage import issued_cards
from .storage_issued import now_text
from .storage_store import Store

OUTCOMES = ("accepted", "overridden")
UNKNOWN_RULE = "(unknown rule)"
# The spec's field, then Epic's spelling of it (https://fhir.epic.com/Documentation?docId=cds-hooks, "Feedback").
OVERRIDE_FIELDS = ("overrideReason", "overrideReasons")
EPIC_REASON = "com.epic.cdshooks.feedback.overrideReason."
EPIC_CATEGORY = EPIC_REASON + "reasonCategory"


def accepted_ids(row: dict[str, Any]) -> list[str]:
    """The suggestion uuids a stored feedback row accepted."""
    raw = row.get("accepted_suggestions")
    return json.loads(raw) if raw else []


def attributed(row: dict[str, Any], rules: dict[str, str], unknown: str = UNKNOWN_RULE) -> list[str]:
    """The rules a feedback item counts for: those of the folded suggestions it accepted (each was
    logged under its own rule), else its card's rule. ``rules``: uuid -> rule from the issued-card log."""
    folded = sorted({rules[s] for s in accepted_ids(row) if s in rules})
    return folded or [rules.get(row["card_uuid"], unknown)]


def _parse_instant(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where} must be an ISO 8601 date-time string", expression=where)
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{where} '{value[:40]}' is not an ISO 8601 date-time", expression=where) from None
    return value


def _text(value: Any, where: str, required: bool = True) -> str | None:
    """A string that can be stored: not another JSON type, no lone surrogates."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{where} must be a non-empty string" if required else f"{where} must be a string",
                         expression=where)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{where} is not valid Unicode text", expression=where) from None
    return value


def _coding(reason: Any, at: str) -> dict[str, Any]:
    if not isinstance(reason, dict) or not isinstance(reason.get("code"), str):
        raise BadRequest(f"{at} must be a Coding with a code", expression=at)
    return {"override_code": _text(reason["code"], f"{at}.code"),
            "override_system": _text(reason.get("system"), f"{at}.system", required=False),
            "override_display": _text(reason.get("display"), f"{at}.display", required=False)}


def _epic_reason(extension: Any, at: str) -> dict[str, Any]:
    """Epic's acknowledgement reason built in Epic: the category is stored as the code, with the
    extension's name as its system; the display (else the title) as the display."""
    if not isinstance(extension, dict):
        raise BadRequest(f"{at} must be an object", expression=at)

    def field(name: str) -> str | None:
        value = extension.get(EPIC_REASON + name)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # a numeric category: the same record as its digits
        return _text(value, f"{at}.{EPIC_REASON}{name}", required=False) or None

    code, display, title = field("reasonCategory"), field("reasonDisplay"), field("reasonTitle")
    shown = f"{title}: {display}" if title and display and title != display else display or title
    return {"override_code": code, "override_system": EPIC_CATEGORY if code else None, "override_display": shown}


def _override(item: dict[str, Any], where: str, outcome: str) -> dict[str, Any]:
    """The override reason as feedback columns: the spec's ``overrideReason`` or Epic's spelling
    ``overrideReasons`` (also an object), each with a ``reason`` Coding or Epic's ``extension``
    (the reason is preferred when both are sent), and ``userComment``."""
    names = [n for n in OVERRIDE_FIELDS if item.get(n) is not None]
    if not names:
        return {}
    at = f"{where}.{names[0]}"
    if len(names) > 1:
        raise BadRequest(f"{where} has both overrideReason and overrideReasons; send one", expression=at)
    if outcome != "overridden":
        raise BadRequest(f"{at} is only allowed with outcome 'overridden'", expression=at)
    override = item[names[0]]
    if not isinstance(override, dict):
        raise BadRequest(f"{at} must be an object", expression=at)
    row: dict[str, Any] = {"user_comment": _text(override.get("userComment"), f"{at}.userComment", required=False)}
    if override.get("reason") is not None:
        row.update(_coding(override["reason"], f"{at}.reason"))
    elif override.get("extension") is not None:
        row.update(_epic_reason(override["extension"], f"{at}.extension"))
    return row


def validate_feedback(body: Any) -> list[dict[str, Any]]:
    """Return normalised feedback rows, or raise BadRequest naming the field."""
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list) or not body["feedback"]:
        raise BadRequest("feedback must be a non-empty array", expression="feedback")
    rows = []
    for i, item in enumerate(body["feedback"]):
        where = f"feedback[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object", expression=where)
        card = _text(item.get("card"), f"{where}.card")
        outcome = item.get("outcome")
        if outcome not in OUTCOMES:
            raise BadRequest(f"{where}.outcome must be 'accepted' or 'overridden'", expression=f"{where}.outcome")
        row: dict[str, Any] = {"card_uuid": card, "outcome": outcome,
                               "outcome_timestamp": _parse_instant(item.get("outcomeTimestamp"),
                                                                   f"{where}.outcomeTimestamp")}
        accepted = item.get("acceptedSuggestions")
        if accepted is not None:
            if outcome != "accepted":
                raise BadRequest(f"{where}.acceptedSuggestions is only allowed with outcome 'accepted'",
                                 expression=f"{where}.acceptedSuggestions")
            if not isinstance(accepted, list) or not all(isinstance(s, dict) for s in accepted):
                raise BadRequest(f"{where}.acceptedSuggestions must be an array of {{\"id\": uuid}}",
                                 expression=f"{where}.acceptedSuggestions")
            row["accepted_suggestions"] = json.dumps(
                [_text(s.get("id"), f"{where}.acceptedSuggestions[{i}].id") for i, s in enumerate(accepted)])
        row.update(_override(item, where, outcome))
        rows.append(row)
    return rows


class FeedbackStore(Store):
    def add(self, service_id: str, rows: list[dict[str, Any]]) -> int:
        """Store validated rows in one transaction; returns how many were new (the rest were
        already stored). StorageUnavailable (503) when the database does not answer."""
        received = now_text()
        # Every row names every column (a batch mixes items with and without optional fields).
        columns = [c.name for c in feedback_table.columns if c.name != "id"]
        values = [{c: {**r, "service_id": service_id, "received_at": received}.get(c) for c in columns}
                  for r in rows]
        with self.transaction() as conn:
            result = conn.execute(self.insert_ignore(feedback_table).on_conflict_do_nothing(), values,
                                  execution_options={"preserve_rowcount": True})
        return max(result.rowcount, 0)

    def all(self) -> list[dict[str, Any]]:
        with self.transaction() as conn:
            return [dict(r._mapping) for r in conn.execute(select(feedback_table).order_by(feedback_table.c.id))]

    @staticmethod
    def _attribute_folded(conn: Any, counts: Counter[tuple[str, str]]) -> None:
        """Move accepted items whose accepted suggestions were folded from other rules (also-due)
        from the card's rule to those rules."""
        rows = [dict(r._mapping) for r in conn.execute(
            select(feedback_table.c.card_uuid, feedback_table.c.accepted_suggestions)
            .where(feedback_table.c.accepted_suggestions.is_not(None)))]
        ids = {s for r in rows for s in accepted_ids(r)} | {r["card_uuid"] for r in rows}
        if not ids:
            return
        rules = {u: rule for u, rule in conn.execute(select(issued_cards.c.card_uuid, issued_cards.c.rule_id)
                                                     .where(issued_cards.c.card_uuid.in_(ids))) if rule}
        for r in rows:
            to = attributed(r, rules)
            own = rules.get(r["card_uuid"], UNKNOWN_RULE)
            if to != [own]:
                counts[(own, "accepted")] -= 1
                counts.update((rule, "accepted") for rule in to)

    def report(self) -> list[dict[str, Any]]:
        """Per rule: cards issued, accepted, overridden, override rate, the three commonest override reasons."""
        self.flush()
        rule = func.coalesce(issued_cards.c.rule_id, UNKNOWN_RULE)
        fb = feedback_table.outerjoin(issued_cards, issued_cards.c.card_uuid == feedback_table.c.card_uuid)
        with self.transaction() as conn:
            issued: dict[str, int] = dict(conn.execute(select(func.coalesce(issued_cards.c.rule_id, "(unknown)"), func.count())
                                       .group_by(issued_cards.c.rule_id)).all())
            outcomes = conn.execute(select(rule, feedback_table.c.outcome, func.count()).select_from(fb)
                                    .group_by(rule, feedback_table.c.outcome)).all()
            # A reason is its code; an Epic reason sent without a category, its display.
            reason = func.coalesce(feedback_table.c.override_code, feedback_table.c.override_display)
            reasons = conn.execute(
                select(rule, reason, func.max(feedback_table.c.override_display), func.count()).select_from(fb)
                .where(reason.is_not(None)).group_by(rule, reason)).all()
            counts: Counter[tuple[str, str]] = Counter({(r, o): n for r, o, n in outcomes})
            self._attribute_folded(conn, counts)
        top: dict[str, list[tuple[int, str, str]]] = {}
        for r, code, display, n in reasons:
            top.setdefault(r, []).append((-n, code, f"{display or code} ({n})"))
        out = []
        for r in sorted(set(issued) | {r for r, _ in counts}):
            accepted, overridden = counts[(r, "accepted")], counts[(r, "overridden")]
            answered = accepted + overridden
            out.append({"rule_id": r, "issued": issued.get(r, 0), "accepted": accepted, "overridden": overridden,
                        "override_rate": round(overridden / answered, 3) if answered else None,
                        "top_override_reasons": "; ".join(t for _, _, t in sorted(top.get(r, []))[:3]) or None})
        return out
