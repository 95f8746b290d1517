"""The store every replica shares: the connection (made on first use, so a
database that is down at start does not stop the service), the JWT ids already
used, and the issued-card log.

When the database does not answer (the policy, see README "Deploying at scale"):
* card answers are given as usual: their issued-card rows wait in memory (at most
  MAX_PENDING; past that the oldest are dropped and counted in ``dropped``) and are
  written when the database is back;
* a JWT whose jti cannot be checked is refused with 503 (a replay cache that cannot
  be read cannot say the token is new);
* feedback is refused with 503 (it is acknowledged only once stored);
* readers of the issued-card log fail open: no rule is known, nothing is suppressed.

The issued-card log is written behind the answer, at most FLUSH_SECONDS later: a
SIGKILL (or a crash, or an outage longer than the queue) loses the rows still queued
(at most FLUSH_SECONDS of cards); feedback that lost its card's row is reported under
"(unknown rule)". SIGTERM writes the queue first (atexit)."""
from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections import deque
from contextlib import contextmanager, nullcontext
from itertools import chain
from typing import Any, Collection, Iterable, Iterator

from sqlalchemy import Engine, Table, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from . import logs
from .cards import Card
from .request import CDSRequest
from .storage import StorageUnavailable, issued_cards, jwt_jti, new_engine, redacted, sqlite_url, upgrade
from .storage_issued import Issued, issued

FLUSH_SECONDS = 1.0     # longest wait of an issued-card row before it is written
FLUSH_ROWS = 500        # written at once (in the background) when this many rows wait
MAX_PENDING = 10_000    # issued-card rows kept in memory while the database is down
PURGE_SECONDS = 60.0    # expired jti rows are deleted at most this often per process
FAIL_FAST_SECONDS = 0.5  # after a failed attempt, calls fail at once for this long (no pile-up on timeouts)
OUTAGE = (OperationalError, InterfaceError, PoolTimeout)
_STORES: "weakref.WeakSet[Store]" = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    """A worker that exits (gunicorn restart, SIGTERM) writes its queued rows first."""
    for store in list(_STORES):
        store.flush_quietly()


class Store:
    def __init__(self, target: str):
        """``target``: a database URL, a SQLite path, or ":memory:"."""
        self.url = sqlite_url(target)
        self.patient_key = b""
        self.dropped = 0
        self._engine: Engine | None = None
        self._schema_ok = False
        self._engine_lock = threading.Lock()
        self._serial: Any = nullcontext()
        self._pending: deque[Issued] = deque()
        self._writing: list[Issued] = []  # the batch a flush is writing now
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._flush_timer: threading.Timer | None = None
        self._last_purge = 0.0
        self._retry_at = 0.0  # monotonic time before which a full batch waits for the timer
        self._down_until = 0.0  # monotonic time before which calls fail without trying
        _STORES.add(self)

    def configure(self, url: str, patient_key: bytes = b"") -> None:
        """Point the store at ``url`` (before or after first use) and set the patient-hash key."""
        self.patient_key = patient_key
        if url == self.url:
            return
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
            self.url, self._engine, self._schema_ok, self._down_until = url, None, False, 0.0

    @property
    def _autocommit(self) -> dict[str, str]:
        # SQLite's connections are in autocommit mode already (storage.new_engine); setting it there would
        # be undone, on their return to the pool, into pysqlite's implicit transactions.
        return {"isolation_level": "AUTOCOMMIT"} if self.backend == "postgresql" else {}

    @property
    def backend(self) -> str:
        """"sqlite" or "postgresql" (also for the postgres:// spelling some platforms give)."""
        name = self.url.split(":", 1)[0].split("+", 1)[0]
        return "postgresql" if name == "postgres" else name

    def _connected(self) -> Engine:
        with self._engine_lock:
            if self._engine is None:
                self._engine = new_engine(self.url)
                # One shared in-memory SQLite connection: its users take turns.
                self._serial = threading.RLock() if self._engine.url.database in (None, "") else nullcontext()
            if not self._schema_ok:
                try:
                    upgrade(self._engine)
                except RuntimeError as exc:
                    raise StorageUnavailable(str(exc)) from None
                self._schema_ok = True
            return self._engine

    @contextmanager
    def transaction(self, read_only: bool = False) -> Iterator[Connection]:
        """One transaction (``read_only``: one that writes nothing, so SQLite takes no write lock);
        StorageUnavailable (503) when the database does not answer."""
        if time.monotonic() < self._down_until:
            raise StorageUnavailable("the service's database does not answer; retry later")
        try:
            engine = self._connected()
            with self._serial, engine.connect() as conn:
                if read_only:  # one SELECT: PostgreSQL without BEGIN/COMMIT (two round trips fewer)
                    conn.execution_options(read_only=True, **self._autocommit)
                with conn.begin():
                    yield conn
        except OUTAGE as exc:
            self._down_until = time.monotonic() + FAIL_FAST_SECONDS
            logs.log(logging.WARNING, "database_unavailable", database=redacted(self.url),
                     error=type(getattr(exc, "orig", None) or exc).__name__)
            raise StorageUnavailable("the service's database does not answer; retry later") from exc

    def insert_ignore(self, table: Table) -> Any:
        """INSERT ... ON CONFLICT DO NOTHING in the backend's dialect."""
        dialect = postgresql if self.backend == "postgresql" else sqlite
        return dialect.insert(table)

    def ping(self) -> None:
        """Raise StorageUnavailable unless the database answers (readiness)."""
        with self.transaction() as conn:
            conn.execute(text("SELECT 1"))

    # JWT ids: one use per (iss, jti) across every replica sharing the database.
    def first_jti_use(self, iss: str, jti: str, keep_until: float, now: float) -> bool:
        """True the first time (iss, jti) is seen; the row is kept until ``keep_until`` (the token's
        exp plus leeway: after that the token is refused as expired anyway). A row that expired
        is taken over by a new token with the same jti."""
        stmt = self.insert_ignore(jwt_jti).values(iss=iss, jti=jti, expires_at=keep_until)
        stmt = stmt.on_conflict_do_update(index_elements=["iss", "jti"], set_={"expires_at": keep_until},
                                          where=jwt_jti.c.expires_at < now).returning(jwt_jti.c.jti)
        with self.transaction() as conn:
            first = conn.execute(stmt).first() is not None
            if now - self._last_purge >= PURGE_SECONDS:
                self._last_purge = now
                conn.execute(jwt_jti.delete().where(jwt_jti.c.expires_at < now))
        return first

    # The issued-card log, written behind the answer.
    def record_issued(self, service_id: str, request: CDSRequest, cards: Iterable[Card], *, issuer: str) -> None:
        """Queue an answer's cards (``issuer``: the JWT's iss, "" without authentication); they are
        written within FLUSH_SECONDS."""
        self._queue(issued(service_id, request, cards, self.patient_key, issuer))

    def record_cards(self, service_id: str, cards: Iterable[tuple[str, str | None]]) -> None:
        """Queue (card uuid, rule id) rows (no patient, draft order or content hash)."""
        at = time.time()
        self._queue([Issued(service_id, uuid, rule, at) for uuid, rule in cards])

    def _queue(self, items: list[Issued], front: bool = False) -> None:
        if not items:
            return
        with self._pending_lock:
            if front:  # rows that failed to be written go back before the newer ones
                self._pending.extendleft(reversed(items))
            else:
                self._pending.extend(items)
            over = len(self._pending) - MAX_PENDING
            for _ in range(max(over, 0)):  # only during an outage: drop the oldest rows
                self._pending.popleft()
            self.dropped += max(over, 0)
            # A full batch is written at once, unless a write is under way or just failed (an outage
            # must not start a thread per answer).
            full = (not front and len(self._pending) >= FLUSH_ROWS and not self._flush_lock.locked()
                    and time.monotonic() >= self._retry_at)
            if self._flush_timer is None:
                self._flush_timer = threading.Timer(FLUSH_SECONDS, self.flush_quietly)
                self._flush_timer.daemon = True
                self._flush_timer.start()
        if full:  # written now, but not on the request's thread
            threading.Thread(target=self.flush_quietly, daemon=True).start()

    def flush(self) -> None:
        """Write the queued issued-card rows in one transaction; on an outage they go back in the queue."""
        with self._flush_lock:
            with self._pending_lock:
                items, self._pending = list(self._pending), deque()
                timer, self._flush_timer = self._flush_timer, None
                self._writing = items
            if timer is not None:
                timer.cancel()
            if not items:
                return
            rows = self._rows(items)
            try:
                if rows:
                    with self.transaction() as conn:
                        conn.execute(self.insert_ignore(issued_cards).on_conflict_do_nothing(), rows)
            except StorageUnavailable:
                self._retry_at = time.monotonic() + FLUSH_SECONDS
                self._queue(items, front=True)
                raise
            finally:
                with self._pending_lock:
                    self._writing = []

    def _rows(self, items: list[Issued]) -> list[dict[str, Any]]:
        """The rows of ``items``; one that cannot be made is dropped alone (counted in ``dropped`` and
        logged with its service and rule, no patient data), never the batch."""
        rows = []
        for item in items:
            try:
                rows.append(item.row())
            except Exception as exc:  # one bad card must not lose the others' rows
                with self._pending_lock:
                    self.dropped += 1
                logs.log(logging.ERROR, "issued_card_dropped", service_id=item.service_id, rule_id=item.rule_id,
                         error=type(exc).__name__)
        return rows

    def flush_quietly(self) -> bool:
        """flush() for the timer, lookups and exit: an outage leaves the rows queued; any other
        failure is logged (its type only) and loses that batch, never the caller's thread."""
        try:
            self.flush()
            return True
        except StorageUnavailable:
            return False
        except Exception as exc:  # the writer thread and a lookup's caller live on
            logs.log(logging.ERROR, "issued_cards_flush_failed", error=type(exc).__name__)
            return False

    def flush_for(self, patient_hash: str, service_ids: Collection[str]) -> None:
        """Before a lookup that must see them: write the queue now if it holds (or is writing) a row of
        this patient from one of these services; nothing is written otherwise. Quiet on an outage."""
        with self._pending_lock:
            waiting = any(i.patient_hash == patient_hash and i.service_id in service_ids
                          for i in chain(self._pending, self._writing))
        if waiting:
            self.flush_quietly()  # waits for a write under way, then writes what is queued

    def rules_for(self, card_uuids: list[str]) -> dict[str, str]:
        """card uuid -> rule id, for the cards any replica issued. Fails open: {} when the
        database does not answer."""
        if not card_uuids:
            return {}
        self.flush_quietly()
        try:
            with self.transaction() as conn:
                rows = conn.execute(select(issued_cards.c.card_uuid, issued_cards.c.rule_id)
                                    .where(issued_cards.c.card_uuid.in_(card_uuids)))
                return {uuid: rule for uuid, rule in rows if rule}
        except StorageUnavailable:
            return {}

    def pending(self) -> int:
        with self._pending_lock:
            return len(self._pending)

    def close(self) -> None:
        self.flush_quietly()
        with self._engine_lock:
            if self._engine is not None:
                self._engine.dispose()
            self._engine, self._schema_ok = None, False

