"""The service's database: one schema, two backends, through SQLAlchemy Core.

``CDS_DATABASE_URL`` names it: ``sqlite:////abs/path`` (the embedded default) or
``postgresql://user:pass@host:port/db`` (run with psycopg 3; replicas share it).
When the URL is unset, ``CDS_FEEDBACK_DB`` (a SQLite path, ``:memory:`` for tests)
keeps working as before; when both are set the URL wins.

The schema carries a version number (table ``schema_version``). It is created or
migrated on first start, or by ``mg-cds db upgrade``; replicas starting together
serialise the upgrade (a PostgreSQL advisory lock, SQLite's write lock)."""
from __future__ import annotations

import os
from typing import Any, Callable

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    pool,
    select,
    text,
)
from sqlalchemy.engine import Connection, make_url

from .errors import CDSError

SCHEMA_VERSION = 3
UPGRADE_LOCK = 0x6D67636473  # PostgreSQL advisory lock id ("mgcds")

metadata = MetaData()
feedback = Table(
    "feedback", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", Text, nullable=False),
    Column("card_uuid", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("outcome_timestamp", Text, nullable=False),
    Column("accepted_suggestions", Text),
    Column("override_system", Text),
    Column("override_code", Text),
    Column("override_display", Text),
    Column("user_comment", Text),
    Column("received_at", Text, nullable=False),
    # The same feedback item (EHRs resend and batch) is stored once, whichever replica gets it.
    Index("feedback_item", "card_uuid", "outcome", "outcome_timestamp", unique=True),
)
issued_cards = Table(
    "issued_cards", metadata,
    Column("card_uuid", Text, primary_key=True),
    Column("service_id", Text, nullable=False),
    Column("rule_id", Text),
    Column("issued_at", Text, nullable=False),
    # What repeat suppression needs: the same rule, patient, draft order and its content, and card.
    Column("indicator", String(16)),
    Column("draft_order_id", Text),
    Column("patient_hash", String(64)),
    Column("content_hash", String(64)),
    Column("summary_hash", String(64)),  # schema 2
    Column("draft_hash", String(64)),  # schema 3
    # The one lookup of an order-sign (cds_service.repeats): this patient's order-select cards for these
    # drafts and rules since an instant (the service first: the patient's order-sign cards are not read).
    # It replaces schema 1's issued_cards_patient_rule (patient_hash, rule_id), which nothing read.
    Index("issued_cards_repeat", "patient_hash", "service_id", "draft_order_id", "rule_id", "issued_at"),  # schema 2
)
jwt_jti = Table(
    "jwt_jti", metadata,
    Column("iss", Text, primary_key=True),
    Column("jti", Text, primary_key=True),
    Column("expires_at", Float, nullable=False),
    Index("jwt_jti_expiry", "expires_at"),
)
schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))


class StorageUnavailable(CDSError):
    """The database does not answer: 503, the client may retry."""
    status = 503
    issue_code = "transient"


def database_url(config: dict[str, Any], instance_path: str | None = None) -> str:
    """The SQLAlchemy URL from the app config: CDS_DATABASE_URL, else CDS_FEEDBACK_DB as a SQLite path."""
    url = str(config.get("CDS_DATABASE_URL", os.environ.get("CDS_DATABASE_URL", "")) or "")
    if url:
        return url
    return sqlite_url(str(config.get("CDS_FEEDBACK_DB") or "feedback.sqlite3"), instance_path)


def sqlite_url(path: str, instance_path: str | None = None) -> str:
    """``sqlite:////abs/path`` for a file path (a relative one is under ``instance_path``);
    a URL is returned as it is."""
    if "://" in path:
        return path
    if path == ":memory:":
        return "sqlite://"
    if not os.path.isabs(path) and instance_path:
        os.makedirs(instance_path, exist_ok=True)
        path = os.path.join(instance_path, path)
    return f"sqlite:///{os.path.abspath(path)}"


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def new_engine(url: str) -> Engine:
    """A pooled engine. PostgreSQL goes through psycopg 3 with short timeouts, so that an
    outage answers 503 quickly instead of holding workers; SQLite is WAL with fsync per commit."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "postgresql":
        return create_engine(parsed, pool_size=5, max_overflow=5, pool_timeout=2.0, pool_pre_ping=True,
                             pool_recycle=1800,
                             connect_args={"connect_timeout": 2, "options": "-c statement_timeout=5000"})
    if parsed.get_backend_name() != "sqlite":
        raise ValueError(f"unsupported database {redacted(url)}: use sqlite:////path or postgresql://")
    memory = parsed.database in (None, "", ":memory:")
    engine = create_engine(parsed, poolclass=pool.StaticPool if memory else pool.QueuePool,
                           connect_args={"timeout": 10.0, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's BEGIN below, not pysqlite's
        if not memory:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")  # an acknowledged row is on disk

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Connection) -> None:
        # A read-only one is one SELECT, its own snapshot: no BEGIN, no write lock (WAL: it never waits).
        if not conn.get_execution_options().get("read_only"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock first: no upgrade deadlock

    return engine


def _version(conn: Connection) -> int:
    names = set(inspect(conn).get_table_names())
    if "schema_version" in names:
        return int(conn.execute(select(schema_version.c.version)).scalar() or 0)
    return -1 if "feedback" in names else 0  # -1: the unversioned SQLite schema of 0.1


def _from_unversioned(conn: Connection) -> None:
    """0.1's SQLite file: issued_cards gains the repeat-suppression columns, the jti column is
    renamed, feedback keeps one row per item (the first stored) and becomes unique per item."""
    for column in ("indicator", "draft_order_id", "patient_hash", "content_hash", "summary_hash", "draft_hash"):
        conn.exec_driver_sql(f"ALTER TABLE issued_cards ADD COLUMN {column} TEXT")
    conn.exec_driver_sql("ALTER TABLE jwt_jti RENAME COLUMN exp TO expires_at")
    conn.exec_driver_sql("DELETE FROM feedback WHERE id NOT IN "
                         "(SELECT MIN(id) FROM feedback GROUP BY card_uuid, outcome, outcome_timestamp)")
    metadata.create_all(conn)  # schema_version
    for table in (feedback, issued_cards, jwt_jti):  # create_all skips the indexes of tables that exist
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _summary_hash(conn: Connection) -> None:
    """1 -> 2: issued_cards gains the summary hash and the index of the order-sign lookup (in place
    of the unread one on patient and rule). Rows written before have no summary hash, so they never
    suppress a card (a repeat is shown)."""
    conn.exec_driver_sql("ALTER TABLE issued_cards ADD COLUMN summary_hash VARCHAR(64)")
    conn.exec_driver_sql("DROP INDEX IF EXISTS issued_cards_patient_rule")
    for index in issued_cards.indexes:
        index.create(conn, checkfirst=True)


def _draft_hash(conn: Connection) -> None:
    """2 -> 3: issued_cards gains the hash of the draft order's content (in place, no index: it is
    compared after the lookup). Rows written before have none, so they never suppress a card."""
    conn.exec_driver_sql("ALTER TABLE issued_cards ADD COLUMN draft_hash VARCHAR(64)")


# MIGRATIONS[v] takes a database at version v to v + 1 (-1 and 0 straight to SCHEMA_VERSION: they
# make today's tables); append here when the schema changes.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    -1: _from_unversioned,
    0: metadata.create_all,
    1: _summary_hash,
    2: _draft_hash,
}


def upgrade(engine: Engine) -> tuple[int, int]:
    """Create or migrate the schema to SCHEMA_VERSION; returns (version before, version after)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": UPGRADE_LOCK})
        before = version = _version(conn)
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"the database's schema version {version} is newer than this release's "
                               f"({SCHEMA_VERSION}); run a newer mg-cds")
        while version < SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version = SCHEMA_VERSION if version <= 0 else version + 1
        if before != version:
            conn.execute(schema_version.delete())
            conn.execute(schema_version.insert().values(version=version))
    return before, version
