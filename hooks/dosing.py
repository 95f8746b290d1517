"""Reading the dose of a MedicationRequest (R4 dosageInstruction) and writing
a corrected one. Handles mass doses (g, mg, [lb_av] never), per-kg and per-m2
doses, frequency/period, count, boundsDuration, boundsPeriod, the common
timing abbreviations, and a malformed doseAndRate sent as an object."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from . import units
from .fhir_read import as_list, cc_text, parse_datetime

UCUM = "http://unitsofmeasure.org"
PERIOD_DAYS = {"s": 1 / 86400, "min": 1 / 1440, "h": 1 / 24, "d": 1.0, "wk": 7.0, "mo": 30.0, "a": 365.0}
DURATION_DAYS = {"d": 1.0, "day": 1.0, "days": 1.0, "wk": 7.0, "week": 7.0, "weeks": 7.0, "h": 1 / 24}
ABBREVIATIONS = {"qd": 1, "daily": 1, "once daily": 1, "bid": 2, "tid": 3, "qid": 4, "q4h": 6, "q6h": 4,
                 "q8h": 3, "q12h": 2, "q24h": 1}
TIMES_A_DAY = re.compile(r"(\d+|once|twice|three|four|five|six)\s*(?:times|x)?\s*(?:a|per|/)\s*day")
WORDS = {"once": 1, "twice": 2, "three": 3, "four": 4, "five": 5, "six": 6}


@dataclass
class OrderedDose:
    amount: float | None      # g for mass doses, g/kg or mg/m2 for relative doses
    dimension: str | None     # mass | per_kg | per_m2
    shown: str                # the dose as ordered, for card text
    per_day: float            # administrations per day
    timing_stated: bool
    days: float | None        # course length, when the order states it
    course_total_g: float | None  # dispenseRequest.quantity in g, when given
    problem: str | None = None


def _dosage(med: dict) -> dict:
    return next((d for d in as_list(med.get("dosageInstruction")) if isinstance(d, dict)), {})


def _dose_quantity(dosage: dict) -> dict | None:
    for dr in as_list(dosage.get("doseAndRate")):  # a list in R4; some EHRs send one object
        if not isinstance(dr, dict):
            continue
        if isinstance(dr.get("doseQuantity"), dict):
            return dr["doseQuantity"]
        if isinstance(dr.get("doseRange"), dict) and isinstance(dr["doseRange"].get("high"), dict):
            return dr["doseRange"]["high"]
    return None


def _frequency(dosage: dict) -> tuple[float, bool, float | None]:
    """(administrations per day, stated?, course days)."""
    timing = dosage.get("timing") if isinstance(dosage.get("timing"), dict) else {}
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    per_day, stated, days = 1.0, False, None
    if repeat.get("frequency") or repeat.get("period"):
        unit_days = PERIOD_DAYS.get(str(repeat.get("periodUnit", "d")))
        try:
            period = float(repeat.get("period") or 1)
            freq = float(repeat.get("frequency") or 1)
            if unit_days:
                per_day, stated = freq / (period * unit_days), True
        except (TypeError, ValueError):
            pass
    if not stated:
        text = (cc_text(timing.get("code")) + " " + str(dosage.get("text") or "")).lower()
        for abbr, n in ABBREVIATIONS.items():
            if re.search(rf"\b{abbr}\b", text):
                per_day, stated = float(n), True
                break
        m = TIMES_A_DAY.search(text)
        if not stated and m:
            per_day, stated = float(WORDS.get(m.group(1), m.group(1) if m.group(1).isdigit() else 1)), True
    if isinstance(repeat.get("count"), (int, float)) and repeat["count"] > 0:
        days = float(repeat["count"]) / per_day
    elif isinstance(repeat.get("boundsDuration"), dict):
        bd = repeat["boundsDuration"]
        factor = DURATION_DAYS.get(str(bd.get("code") or bd.get("unit") or "").lower())
        if factor and isinstance(bd.get("value"), (int, float)):
            days = bd["value"] * factor
    elif isinstance(repeat.get("boundsPeriod"), dict):
        start = parse_datetime(repeat["boundsPeriod"].get("start"))
        end = parse_datetime(repeat["boundsPeriod"].get("end"))
        if start and end and end >= start:
            days = float((end.date() - start.date()).days + 1)
    return per_day, stated, days


def ordered_dose(med: dict, mass_target: str = "g") -> OrderedDose:
    dosage = _dosage(med)
    per_day, stated, days = _frequency(dosage)
    course = None
    disp = (med.get("dispenseRequest") or {}).get("quantity") if isinstance(med.get("dispenseRequest"), dict) else None
    if isinstance(disp, dict) and isinstance(disp.get("value"), (int, float)):
        course = units.convert(float(disp["value"]), disp.get("code") or disp.get("unit"), "g")
    q = _dose_quantity(dosage)
    if q is None or not isinstance(q.get("value"), (int, float)):
        shown = str(dosage.get("text") or "no structured dose")
        return OrderedDose(None, None, shown, per_day, stated, days, course,
                           problem="the order has no structured dose (doseQuantity)")
    unit = q.get("code") or q.get("unit")
    shown = f"{q['value']:g} {q.get('unit') or q.get('code') or ''}".strip()
    dim = units.dimension(unit)
    if dim == "mass":
        return OrderedDose(units.convert(float(q["value"]), unit, mass_target), dim, shown, per_day, stated, days, course)
    if dim == "per_kg":
        return OrderedDose(units.convert(float(q["value"]), unit, "g/kg"), dim, shown, per_day, stated, days, course)
    if dim == "per_m2":
        return OrderedDose(units.convert(float(q["value"]), unit, "mg/m2"), dim, shown, per_day, stated, days, course)
    return OrderedDose(None, None, shown, per_day, stated, days, course,
                       problem=f"dose unit '{unit or '(none)'}' cannot be interpreted")


def with_dose(med: dict, *, value: float, unit: str, text: str, frequency: int = 1, period: float = 1,
              period_unit: str = "d", duration_days: float | None = None, count: int | None = None,
              course_total: tuple[float, str] | None = None) -> dict:
    """A copy of the order with its first dosageInstruction replaced."""
    out = copy.deepcopy(med)
    old = _dosage(med)
    repeat: dict[str, Any] = {"frequency": frequency, "period": period, "periodUnit": period_unit}
    if duration_days is not None:
        repeat["boundsDuration"] = {"value": duration_days, "unit": "days", "system": UCUM, "code": "d"}
    if count is not None:
        repeat["count"] = count
    dosage: dict[str, Any] = {"text": text, "timing": {"repeat": repeat},
                              "doseAndRate": [{"doseQuantity": {"value": value, "unit": unit, "system": UCUM,
                                                                "code": unit}}]}
    if isinstance(old.get("route"), dict):
        dosage["route"] = old["route"]
    out["dosageInstruction"] = [dosage] + [d for d in as_list(med.get("dosageInstruction"))[1:]]
    if course_total and isinstance(out.get("dispenseRequest"), dict) and "quantity" in out["dispenseRequest"]:
        out["dispenseRequest"]["quantity"] = {"value": course_total[0], "unit": course_total[1], "system": UCUM,
                                              "code": course_total[1]}
    return out
