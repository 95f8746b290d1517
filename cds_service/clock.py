"""The injectable clock: CDS_NOW fixes "now" for reproducible evaluation."""
from __future__ import annotations

from datetime import datetime, timezone


def parse_instant(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def now(config: dict) -> datetime:
    fixed = config.get("CDS_NOW")
    return parse_instant(fixed) if fixed else datetime.now(timezone.utc)
