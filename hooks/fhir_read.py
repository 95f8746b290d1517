"""Helpers that read raw FHIR R4 JSON defensively (no model parsing)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

Coding = tuple[str | None, str | None, str | None]  # system, code, display


def codings(cc: Any) -> Iterator[Coding]:
    if not isinstance(cc, dict):
        return
    for c in cc.get("coding") or ():
        if isinstance(c, dict):
            yield c.get("system"), c.get("code"), c.get("display")


def cc_text(cc: Any) -> str:
    """code.text and every coding display, joined: what a name match reads."""
    if not isinstance(cc, dict):
        return ""
    parts = [cc["text"]] if isinstance(cc.get("text"), str) else []
    parts.extend(d for _, _, d in codings(cc) if isinstance(d, str))
    return " | ".join(parts)


def cc_label(cc: Any) -> str:
    if not isinstance(cc, dict):
        return "(no name)"
    if isinstance(cc.get("text"), str) and cc["text"].strip():
        return cc["text"].strip()
    for _, code, display in codings(cc):
        if display:
            return display
    for _, code, _ in codings(cc):
        if code:
            return str(code)
    return "(no name)"


def parse_datetime(value: Any) -> datetime | None:
    """FHIR date, dateTime or instant -> aware datetime (partial dates at their start)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        dt = datetime.fromisoformat(value)  # most values, 'Z' included on Python 3.11+
    except ValueError:
        text = value.strip().replace("Z", "+00:00")
        try:
            if len(text) == 4:
                dt = datetime(int(text), 1, 1)
            elif len(text) == 7:
                dt = datetime(int(text[:4]), int(text[5:7]), 1)
            else:
                dt = datetime.fromisoformat(text)
        except ValueError:
            return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def period_point(period: Any) -> datetime | None:
    if not isinstance(period, dict):
        return None
    return parse_datetime(period.get("end")) or parse_datetime(period.get("start"))


def observation_date(obs: dict) -> tuple[datetime | None, str]:
    """effective[x], then issued, then meta.lastUpdated; else undated."""
    for key in ("effectiveDateTime", "effectiveInstant"):
        dt = parse_datetime(obs.get(key))
        if dt:
            return dt, "effective"
    dt = period_point(obs.get("effectivePeriod"))
    if dt:
        return dt, "effective"
    dt = parse_datetime(obs.get("issued"))
    if dt:
        return dt, "issued"
    dt = parse_datetime((obs.get("meta") or {}).get("lastUpdated"))
    if dt:
        return dt, "meta.lastUpdated"
    return None, "undated"


def condition_date(cond: dict) -> datetime | None:
    """The later of onset and recordedDate."""
    onset = parse_datetime(cond.get("onsetDateTime")) or period_point(cond.get("onsetPeriod"))
    recorded = parse_datetime(cond.get("recordedDate"))
    dates = [d for d in (onset, recorded) if d]
    return max(dates) if dates else None


def performed_date(resource: dict) -> datetime | None:
    return (parse_datetime(resource.get("performedDateTime")) or period_point(resource.get("performedPeriod"))
            or parse_datetime(resource.get("effectiveDateTime")) or period_point(resource.get("effectivePeriod"))
            or parse_datetime(resource.get("occurrenceDateTime")) or parse_datetime(resource.get("authoredOn")))


def reference_tail(ref: Any) -> str | None:
    """'Patient/1', 'http://x/fhir/Patient/1' or '#contained' -> 'Patient/1' / '#contained'."""
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("#"):
        return ref
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else ref


def subject_patient(resource: dict) -> str | None:
    """The id of the Patient the resource is about, when its reference says so."""
    tail = reference_tail(resource.get("subject") or resource.get("patient"))
    if tail and tail.startswith("Patient/"):
        return tail[len("Patient/"):]
    return None


def fmt_date(dt: datetime | None) -> str:
    return dt.date().isoformat() if dt else "undated"


def as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
