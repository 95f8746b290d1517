"""The database commands: ``mg-cds db upgrade [--db URL]`` (cli.py registers them
with ``add_db_parser``), also run as ``python -m cds_service.storage_cli db upgrade``
(the Kubernetes init container)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .storage import database_url, new_engine, redacted, sqlite_url, upgrade


def default_url() -> str:
    """The database the service would use with this environment (for the command line)."""
    from flask import Flask

    from .config import load_config
    return database_url(load_config(), Flask("cds_service.app").instance_path)


def cmd_db(args: argparse.Namespace) -> int:
    """``mg-cds db upgrade [--db URL]``: create or migrate the schema, then say so."""
    url = sqlite_url(args.db) if args.db else default_url()
    engine = new_engine(url)
    try:
        before, after = upgrade(engine)
    except (SQLAlchemyError, RuntimeError) as exc:
        print(f"{redacted(url)}: upgrade failed: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{redacted(url)}: schema version {max(before, 0)} -> {after}" if before != after
          else f"{redacted(url)}: schema version {after}, up to date")
    return 0


def add_db_parser(sub: Any) -> None:
    """The ``db`` subcommand of ``mg-cds``."""
    p = sub.add_parser("db", help="create or migrate the database schema")
    p.add_argument("action", choices=["upgrade"])
    p.add_argument("--db", help="database URL or SQLite path (default: CDS_DATABASE_URL, else CDS_FEEDBACK_DB)")
    p.set_defaults(func=cmd_db)


def main(argv: list[str] | None = None) -> int:
    """``python -m cds_service.storage_cli db upgrade``: the same as ``mg-cds db upgrade``."""
    parser = argparse.ArgumentParser(prog="python -m cds_service.storage_cli")
    add_db_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
