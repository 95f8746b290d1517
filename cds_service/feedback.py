"""Feedback (CDS Hooks 2.0 "Feedback" section): validation and a durable
SQLite store. WAL mode and one transaction per request: a 2xx is sent only
after the commit, so an acknowledged feedback survives a crash or restart.
The store also records which rule issued each card uuid, so that overrides
can be counted per rule, and the JWT ids already used, so that a replayed token
is refused by every gunicorn worker sharing the file.

The issued-cards log is analytics, written behind the answer: rows wait in memory
and are written in one transaction at most FLUSH_SECONDS later (or at FLUSH_ROWS),
so a card answer pays for a list append, not an SQLite insert."""
from __future__ import annotations

import atexit
import json
import sqlite3
import threading
import uuid
import weakref
from datetime import datetime
from typing import Any, Iterable

from .errors import BadRequest

OUTCOMES = ("accepted", "overridden")
FLUSH_SECONDS = 1.0   # longest wait of an issued-card row before it is written
FLUSH_ROWS = 500      # written at once when this many rows wait
_STORES: "weakref.WeakSet[FeedbackStore]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    """A worker that exits (gunicorn restart, SIGTERM) writes its queued rows first."""
    for store in list(_STORES):
        store.flush()

SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    service_id TEXT NOT NULL,
    card_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    outcome_timestamp TEXT NOT NULL,
    accepted_suggestions TEXT,
    override_system TEXT,
    override_code TEXT,
    override_display TEXT,
    user_comment TEXT,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
CREATE INDEX IF NOT EXISTS feedback_card ON feedback(card_uuid);
CREATE TABLE IF NOT EXISTS jwt_jti (
    iss TEXT NOT NULL,
    jti TEXT NOT NULL,
    exp REAL NOT NULL,
    PRIMARY KEY (iss, jti)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS issued_cards (
    card_uuid TEXT PRIMARY KEY,
    service_id TEXT NOT NULL,
    rule_id TEXT,
    issued_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
);
"""


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
        override = item.get("overrideReason")
        if override is not None:
            if outcome != "overridden":
                raise BadRequest(f"{where}.overrideReason is only allowed with outcome 'overridden'",
                                 expression=f"{where}.overrideReason")
            if not isinstance(override, dict):
                raise BadRequest(f"{where}.overrideReason must be an object", expression=f"{where}.overrideReason")
            reason = override.get("reason")
            if reason is not None:
                at = f"{where}.overrideReason.reason"
                if not isinstance(reason, dict) or not isinstance(reason.get("code"), str):
                    raise BadRequest(f"{at} must be a Coding with a code", expression=at)
                row.update(override_code=_text(reason["code"], f"{at}.code"),
                           override_system=_text(reason.get("system"), f"{at}.system", required=False),
                           override_display=_text(reason.get("display"), f"{at}.display", required=False))
            row["user_comment"] = _text(override.get("userComment"), f"{where}.overrideReason.userComment",
                                        required=False)
        rows.append(row)
    return rows


class FeedbackStore:
    def __init__(self, path: str):
        # ":memory:" (tests) becomes a named shared-cache database so that every
        # thread's connection sees the same data while this store lives.
        self._uri = path == ":memory:"
        self.path = f"file:mg-cds-{uuid.uuid4().hex}?mode=memory&cache=shared" if self._uri else path
        self._local = threading.local()
        self._keeper = self._connect()
        self._keeper.executescript(SCHEMA)
        self._pending: list[tuple[str, str, str | None]] = []
        self._pending_lock = threading.Lock()
        self._flush_timer: threading.Timer | None = None
        self._flush_lock = threading.Lock()
        _STORES.add(self)

    def _connect(self, durable: bool = True) -> sqlite3.Connection:
        """Per-thread connections. Feedback commits with synchronous=FULL (fsync before
        the 200); JWT ids and lookups use NORMAL (no fsync per call)."""
        name = "durable" if durable else "fast"
        conn = getattr(self._local, name, None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, uri=self._uri,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.row_factory = sqlite3.Row
            setattr(self._local, name, conn)
        return conn

    def add(self, service_id: str, rows: list[dict[str, Any]]) -> int:
        conn = self._connect()
        cols = ("service_id", "card_uuid", "outcome", "outcome_timestamp", "accepted_suggestions",
                "override_system", "override_code", "override_display", "user_comment")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(f"INSERT INTO feedback ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                             [tuple({**r, "service_id": service_id}.get(c) for c in cols) for r in rows])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return len(rows)

    def record_cards(self, service_id: str, cards: Iterable[tuple[str, str | None]]) -> None:
        """Queue (card uuid, rule id) rows; they are written within FLUSH_SECONDS."""
        rows = [(uuid, service_id, rule) for uuid, rule in cards]
        if not rows:
            return
        with self._pending_lock:
            self._pending.extend(rows)
            full = len(self._pending) >= FLUSH_ROWS
            if not full and self._flush_timer is None:
                self._flush_timer = threading.Timer(FLUSH_SECONDS, self.flush)
                self._flush_timer.daemon = True
                self._flush_timer.start()
        if full:
            self.flush()

    def flush(self) -> None:
        """Write the queued issued-card rows in one transaction."""
        with self._pending_lock:
            rows, self._pending = self._pending, []
            timer, self._flush_timer = self._flush_timer, None
        if timer is not None:
            timer.cancel()
        if not rows:
            return
        # One connection for every flush, whichever thread runs it (the timer or a lookup)
        with self._flush_lock:
            conn = self._keeper
            conn.execute("BEGIN")
            try:
                conn.executemany(
                    "INSERT OR IGNORE INTO issued_cards (card_uuid, service_id, rule_id) VALUES (?,?,?)", rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def first_jti_use(self, iss: str, jti: str, exp: float, now: float) -> bool:
        """True the first time (iss, jti) is seen by any worker sharing this database."""
        conn = self._connect(durable=False)
        if conn.execute("INSERT OR IGNORE INTO jwt_jti (iss, jti, exp) VALUES (?, ?, ?)", (iss, jti, exp)).rowcount == 0:
            return False
        self._jti_inserts = getattr(self, "_jti_inserts", 0) + 1
        if self._jti_inserts % 1000 == 0:
            conn.execute("DELETE FROM jwt_jti WHERE exp < ?", (now - 3600,))
        return True

    def rules_for(self, card_uuids: list[str]) -> dict[str, str]:
        """card uuid -> rule id, for the cards this service issued."""
        if not card_uuids:
            return {}
        self.flush()
        marks = ",".join("?" * len(card_uuids))
        rows = self._connect(durable=False).execute(
            f"SELECT card_uuid, rule_id FROM issued_cards WHERE card_uuid IN ({marks})", card_uuids)
        return {r["card_uuid"]: r["rule_id"] for r in rows if r["rule_id"]}

    def all(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._connect().execute("SELECT * FROM feedback ORDER BY id")]

    def report(self) -> list[dict[str, Any]]:
        """Per rule: cards issued, accepted, overridden, override rate, the three commonest override reasons."""
        self.flush()
        conn = self._connect()
        query = """
        WITH rules AS (SELECT COALESCE(rule_id, '(unknown)') AS rule_id, card_uuid FROM issued_cards),
        fb AS (SELECT f.*, COALESCE(i.rule_id, '(unknown rule)') AS rule_id
               FROM feedback f LEFT JOIN issued_cards i ON i.card_uuid = f.card_uuid)
        SELECT r.rule_id,
               (SELECT COUNT(*) FROM rules x WHERE x.rule_id = r.rule_id) AS issued,
               (SELECT COUNT(*) FROM fb WHERE fb.rule_id = r.rule_id AND outcome = 'accepted') AS accepted,
               (SELECT COUNT(*) FROM fb WHERE fb.rule_id = r.rule_id AND outcome = 'overridden') AS overridden,
               (SELECT group_concat(reason, '; ') FROM (
                  SELECT COALESCE(MAX(override_display), override_code) || ' (' || COUNT(*) || ')' AS reason FROM fb
                  WHERE fb.rule_id = r.rule_id AND override_code IS NOT NULL
                  GROUP BY override_code ORDER BY COUNT(*) DESC, override_code LIMIT 3)) AS top_override_reasons
        FROM (SELECT rule_id FROM rules UNION SELECT rule_id FROM fb) r ORDER BY r.rule_id
        """
        out = []
        for row in conn.execute(query):
            d = dict(row)
            answered = d["accepted"] + d["overridden"]
            d["override_rate"] = round(d["overridden"] / answered, 3) if answered else None
            out.append(d)
        return out
