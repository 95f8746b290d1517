"""Helpers that read FHIR R4 defensively (no validation): the structs of
``hooks.fhir_model``, and the few elements every model keeps as plain JSON
(Periods, Durations, a dispenseRequest read from the resource as sent)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

from . import units
from .fhir_model import CodeableConcept, Medication, Reference, as_concept

Coding = tuple[str | None, str | None, str | None]  # system, code, display


def codings(cc: Any) -> Iterator[Coding]:
    """The (system, code, display) of a CodeableConcept; one in plain JSON (a dosing element,
    an interpretation) is converted first."""
    if type(cc) is not CodeableConcept:
        cc = as_concept(cc)
        if cc is None:
            return
    for c in cc.coding or ():
        yield c.system, c.code, c.display


def _text(cc: Any) -> str | None:
    if type(cc) is not CodeableConcept:
        cc = as_concept(cc)
    text = cc.text if cc is not None else None
    return text if isinstance(text, str) else None


def cc_text(cc: Any) -> str:
    """code.text and every coding display, joined: what a name match reads."""
    text = _text(cc)
    parts = [text] if text is not None else []
    parts.extend(d for _, _, d in codings(cc) if isinstance(d, str))
    return " | ".join(parts)


def cc_label(cc: Any) -> str:
    text = _text(cc)
    if text is not None and text.strip():
        return text.strip()
    for _, _code, display in codings(cc):
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


def period_bounds(period: Any) -> tuple[datetime | None, datetime | None]:
    """(start, end) of a Period (plain JSON in every model); a one-sided Period gives its one date for both."""
    if not isinstance(period, dict):
        return None, None
    start, end = parse_datetime(period.get("start")), parse_datetime(period.get("end"))
    return start or end, end or start


# (dateTime element, Period element) pairs, in the order a resource type uses them
_WHEN = (("effectiveDateTime", "effectivePeriod"), ("performedDateTime", "performedPeriod"),
         ("occurrenceDateTime", "occurrencePeriod"))


def medication_period(resource: Any) -> tuple[datetime | None, datetime | None]:
    """(start, end) of a medication or procedure: effective[x], performed[x] or occurrence[x]
    (Period.start / Period.end, or the one date for both); for a MedicationRequest the
    dosageInstruction's timing.repeat.boundsPeriod, else authoredOn; else dateAsserted."""
    if resource.resourceType != "MedicationRequest":  # a request has none of them: skip the lookups
        for moment, period in _WHEN:
            dt = parse_datetime(getattr(resource, moment, None))
            if dt:
                return dt, dt
            start, end = period_bounds(getattr(resource, period, None))
            if start:
                return start, end
    starts, ends, lasts = [], [], []
    for dosage in as_list(getattr(resource, "dosageInstruction", None)):
        repeat = dosage.timing.repeat if dosage.timing is not None else None
        if repeat is None:
            continue
        start, end = period_bounds(repeat.boundsPeriod)
        if start:
            starts.append(start)
            ends.append(end)
        lasts.append(_duration_days(repeat.boundsDuration))
    if starts:
        return min(starts), max(ends)
    dt = parse_datetime(getattr(resource, "authoredOn", None)) or parse_datetime(getattr(resource, "dateAsserted", None))
    days = max((d for d in lasts if d is not None), default=None)
    if dt is not None and days is not None and days >= 1:  # a 5-day course from its first day: 4 days on
        return dt, later(dt, timedelta(days=days - 1))
    return dt, dt


DURATION_DAYS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7}


def supply_end(resource: Any, start: datetime) -> datetime | None:
    """The last day a prescription supplies the drug: its dispenseRequest's validityPeriod.end, or
    ``start`` + expectedSupplyDuration x (numberOfRepeatsAllowed + 1); None when it gives neither.
    A 90-day supply renewed quarterly is taken throughout, though each order is dated one day.
    ``resource`` is the order as sent (plain JSON): no model holds the dispenseRequest, rarely asked."""
    dispense = resource.get("dispenseRequest") if isinstance(resource, dict) else None
    if not isinstance(dispense, dict):
        return None
    ends = [period_bounds(dispense.get("validityPeriod"))[1]]
    days, repeats = _duration_days(dispense.get("expectedSupplyDuration")), dispense.get("numberOfRepeatsAllowed")
    if days is not None:
        counted = isinstance(repeats, int) and not isinstance(repeats, bool) and 0 <= repeats < 100
        fills = 1 + (repeats if counted else 0)
        ends.append(later(start, timedelta(days=days * fills)))
    return max((e for e in ends if e is not None), default=None)


def _duration_days(duration: Any) -> float | None:
    """A Duration (plain JSON in every model) in days (days or weeks; other units are not read)."""
    if not isinstance(duration, dict):
        return None
    value = duration.get("value")
    per = DURATION_DAYS.get(str(duration.get("code") or duration.get("unit") or "").lower())
    if per is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    days = value * per
    return days if 0 < days < 100_000 else None


OPHTHALMIC = re.compile(r"ophthalm|\beyes?\b|ocular|conjunctiv")
OTIC = re.compile(r"\botic\b|\bears?\b|auricular")
TOPICAL = re.compile(r"\btopical|\bcutaneous\b|\bdermal\b|\bto skin\b|\bcream\b|\blotion\b|\bointment\b")
ROUTES = (("ophthalmic", OPHTHALMIC), ("otic", OTIC), ("topical", TOPICAL))


def _local_routes(text: str) -> set[str]:
    return {kind for kind, pattern in ROUTES if pattern.search(text)}


def route_kind(resource: Any, concept: Any = None) -> str:
    """systemic | ophthalmic | otic | topical, from the dosage route when one is given (any other
    route, e.g. oral, IV, irrigation, or a coded route this cannot read, is systemic), else from the
    product name (e.g. "Timolol 0.5% Ophthalmic Solution"). Never from instruction prose ("report
    swelling of the eyes"). Signals that disagree (two local kinds, or a route and a product name
    naming different ones) are systemic: the safer reading for a drug that can worsen MG."""
    routes, given = [], False
    for dosage in dosages(resource):
        if dosage.route is not None:
            given = True
            routes.append(cc_text(dosage.route).lower())
    named = _local_routes(cc_text(concept).lower())
    if given:
        kinds = _local_routes(" ".join(routes))
        if len(kinds) != 1 or (named and named != kinds):
            return "systemic"
    else:
        kinds = named
    return next(iter(kinds)) if len(kinds) == 1 else "systemic"


STRENGTH = re.compile(r"(\d+(?:\.\d+)?)\s*(mg|g|mcg|ug|µg)\b(?!\s*/\s*(?:\d+(?:\.\d+)?\s*)?(?:ml|l|actuat|hr|h)\b)")


def _strength_from_ingredients(medication: Medication) -> float | None:
    """The strength per unit of the dose form (one tablet) from Medication.ingredient, in mg:
    one ingredient with a strength whose denominator, if any, is one unit of a counted form."""
    strengths = [i.strength for i in as_list(medication.ingredient) if i.strength is not None]
    if len(strengths) != 1:
        return None
    numerator, denominator = strengths[0].numerator, strengths[0].denominator
    value = numerator.value if numerator is not None else None
    if numerator is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if denominator is not None:
        per = denominator.value
        unit = denominator.code or denominator.unit
        if per not in (1, 1.0) or (unit is not None and units.dimension(str(unit)) != "count"):
            return None
    try:
        mg = units.convert(float(value), str(numerator.code or numerator.unit or ""), "mg")
    except OverflowError:
        return None
    return mg if mg is not None and 0 < mg < float("inf") else None


def _strength_from_name(text: str) -> float | None:
    """One strength in a product name ("Pyridostigmine Bromide 60 MG Oral Tablet"), in mg; None when
    the name has none, several (combinations) or only a concentration (mg/mL)."""
    found = {units.convert(float(n), u.replace("µg", "ug"), "mg") for n, u in STRENGTH.findall(text.lower())}
    found.discard(None)
    return found.pop() if len(found) == 1 else None


def strength_mg(med: Any, medication: Medication | None = None) -> float | None:
    """The strength of one tablet (or capsule) of a medication's product, in mg, so that a dose
    given as a count of tablets ({value: 3, code: "{pill}"}) is tablets x strength. Read from the
    ingredient strength of the Medication its medicationReference resolved to (``medication``:
    contained, a draftOrders entry, or pooled), else the product name (Medication.code,
    medicationCodeableConcept, or medicationReference.display); None when no single strength can be read."""
    if medication is not None:
        strength = _strength_from_ingredients(medication)
        if strength is not None:
            return strength
    names = [cc_text(medication.code) if medication is not None else "",
             cc_text(getattr(med, "medicationCodeableConcept", None))]
    reference = getattr(med, "medicationReference", None)
    display = reference.display if reference is not None else None
    names.append(display if isinstance(display, str) else "")
    for name in names:
        strength = _strength_from_name(name) if name else None
        if strength is not None:
            return strength
    return None


def observation_date(obs: Any) -> tuple[datetime | None, str]:
    """effective[x], then issued; else undated. Never meta.lastUpdated: a server stamps it when
    it stores the record, so an undated result loaded today is not a result from today."""
    moment, instant, period, issued = obs.effectiveDateTime, obs.effectiveInstant, obs.effectivePeriod, obs.issued
    dt = parse_datetime(moment) or parse_datetime(instant) or period_point(period)
    if dt:
        return dt, "effective"
    dt = parse_datetime(issued)
    if dt:
        return dt, "issued"
    return None, "undated"


def condition_date(cond: Any) -> datetime | None:
    """The later of onset and recordedDate."""
    onset = parse_datetime(cond.onsetDateTime) or period_point(cond.onsetPeriod)
    recorded = parse_datetime(cond.recordedDate)
    dates = [d for d in (onset, recorded) if d]
    return max(dates) if dates else None


def performed_date(resource: Any) -> datetime | None:
    """performed[x], effective[x], occurrenceDateTime or authoredOn: whichever the resource's type has."""
    for moment, period in (_WHEN[1], _WHEN[0]):
        dt = parse_datetime(getattr(resource, moment, None)) or period_point(getattr(resource, period, None))
        if dt:
            return dt
    return (parse_datetime(getattr(resource, "occurrenceDateTime", None))
            or parse_datetime(getattr(resource, "authoredOn", None)))


def reference_tail(ref: Any) -> str | None:
    """'Patient/1', 'http://x/fhir/Patient/1' or '#contained' -> 'Patient/1' / '#contained'."""
    if isinstance(ref, Reference):
        ref = ref.reference
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("#"):
        return ref
    parts = ref.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else ref


def subject_patient(resource: Any) -> str | None:
    """The id of the Patient the resource is about, when its reference says so."""
    tail = reference_tail(resource.subject or getattr(resource, "patient", None))
    if tail and tail.startswith("Patient/"):
        return tail[len("Patient/"):]
    return None


def later(dt: datetime, delta: timedelta) -> datetime:
    """``dt + delta``, held at the last representable time: a chart may be dated 9999-12-31."""
    try:
        return dt + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=dt.tzinfo)


def fmt_date(dt: datetime | None) -> str:
    return dt.date().isoformat() if dt else "undated"


def dosages(resource: Any) -> list:
    """dosageInstruction (a request) and dosage (an administration: one object; a statement: a list)."""
    return as_list(getattr(resource, "dosageInstruction", None)) + as_list(getattr(resource, "dosage", None))


def as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
