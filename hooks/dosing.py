"""Reading the dose of a MedicationRequest (R4 dosageInstruction) and writing
a corrected one. Handles mass doses (g, mg, [lb_av] never), per-kg and per-m2
doses, frequency/period, count, boundsDuration, boundsPeriod, the common
timing abbreviations, and a malformed doseAndRate sent as an object."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from . import units
from .fhir_read import as_list, cc_text, parse_datetime
from .values import to_number

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
    doses: float | None = None    # administrations in the order (count, or duration x frequency)
    unit: str | None = None       # the dose unit as ordered (e.g. "mg", "g/kg", "{tbl}")

    @property
    def interval_days(self) -> float:
        """Days between administrations (1 for once daily, 28 for every 4 weeks)."""
        return 1 / self.per_day if self.per_day > 0 else 0.0


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


# Data-plausibility bounds, not clinical content: no dose, count, frequency, period or duration is
# written outside them, so such a number is a data error and reads as absent (the rule then says the
# order cannot be interpreted) rather than overflowing the arithmetic.
PLAUSIBLE_NUMBER = (1e-6, 1e9)
MAX_PER_DAY = 1440.0  # a dose a minute


def _positive(value: Any, default: float | None = None) -> float | None:
    """A positive finite JSON number within PLAUSIBLE_NUMBER (values.to_number: never a bool, a string,
    infinity or an integer too large for a float), else ``default``."""
    if value is None or isinstance(value, str):
        return default
    number = to_number(value)
    lo, hi = PLAUSIBLE_NUMBER
    return number if number is not None and lo <= number <= hi else default


def _finite(value: float | None) -> float | None:
    """A converted dose that overflowed to infinity is no dose (the rule says it cannot interpret it)."""
    return value if value is not None and value != float("inf") else None


def _frequency(dosage: dict) -> tuple[float, bool, float | None, float | None]:
    """(administrations per day, stated?, course days, administrations)."""
    timing = dosage.get("timing") if isinstance(dosage.get("timing"), dict) else {}
    repeat = timing.get("repeat") if isinstance(timing.get("repeat"), dict) else {}
    per_day, stated, days = 1.0, False, None
    if repeat.get("frequency") or repeat.get("period"):
        unit_days = PERIOD_DAYS.get(str(repeat.get("periodUnit", "d")))
        period = _positive(repeat.get("period"), default=1.0)
        freq = _positive(repeat.get("frequency"), default=1.0)
        rate = freq / (period * unit_days) if unit_days and period and freq else 0.0
        if 0.0 < rate <= MAX_PER_DAY:
            per_day, stated = rate, True
    if not stated:
        text = (cc_text(timing.get("code")) + " " + str(dosage.get("text") or "")).lower()
        for abbr, n in ABBREVIATIONS.items():
            if re.search(rf"\b{abbr}\b", text):
                per_day, stated = float(n), True
                break
        m = TIMES_A_DAY.search(text)
        if not stated and m:
            per_day, stated = float(WORDS.get(m.group(1), m.group(1) if m.group(1).isdigit() else 1)), True
    doses = None
    count = _positive(repeat.get("count"))
    if count:
        doses = count
        days = doses / per_day
    elif isinstance(repeat.get("boundsDuration"), dict):
        bd = repeat["boundsDuration"]
        factor = DURATION_DAYS.get(str(bd.get("code") or bd.get("unit") or "").lower())
        value = _positive(bd.get("value"))
        if factor and value:
            days = value * factor
    elif isinstance(repeat.get("boundsPeriod"), dict):
        start = parse_datetime(repeat["boundsPeriod"].get("start"))
        end = parse_datetime(repeat["boundsPeriod"].get("end"))
        if start and end and end >= start:
            days = float((end.date() - start.date()).days + 1)
    if doses is None and days is not None:
        doses = days * per_day if per_day >= 1 else max(1.0, round(days * per_day))
    return per_day, stated, days, doses


def ordered_dose(med: dict, mass_target: str = "g") -> OrderedDose:
    dosage = _dosage(med)
    per_day, stated, days, doses = _frequency(dosage)
    course = None
    disp = (med.get("dispenseRequest") or {}).get("quantity") if isinstance(med.get("dispenseRequest"), dict) else None
    if isinstance(disp, dict) and _positive(disp.get("value")):
        course = _finite(units.convert(_positive(disp.get("value")), disp.get("code") or disp.get("unit"), "g"))
    q = _dose_quantity(dosage)
    value = _positive(q.get("value")) if q is not None else None
    if q is None or value is None:
        shown = str(dosage.get("text") or "no structured dose")
        problem = ("the order has no structured dose (doseQuantity)" if q is None or q.get("value") is None
                   else "the dose value is not a usable number")
        return OrderedDose(None, None, shown, per_day, stated, days, course, problem=problem, doses=doses)
    unit = q.get("code") or q.get("unit")
    shown = f"{q['value']:g} {q.get('unit') or q.get('code') or ''}".strip()
    dim = units.dimension(unit)
    target = {"mass": mass_target, "per_kg": "g/kg", "per_m2": "mg/m2"}.get(dim or "")
    if target:
        return OrderedDose(_finite(units.convert(value, unit, target)), dim, shown, per_day, stated, days, course,
                           doses=doses, unit=unit)
    if dim == "count":  # tablets, capsules, {pill}: times the product's strength (MedEntry.strength_mg)
        return OrderedDose(value, "tablets", shown, per_day, stated, days, course, doses=doses, unit=unit)
    return OrderedDose(None, None, shown, per_day, stated, days, course,
                       problem=f"dose unit '{unit or '(none)'}' cannot be interpreted", doses=doses, unit=unit)


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


# ---------------------------------------------------------------- regimen recognition
# Each reader takes the ordered dose and a threshold getter ``t`` (the rule's declared
# thresholds, thresholds.json) and returns the findings, each with its indicator, and the
# nearest regimen of the same kind when the order is above it.
LEVELS = {"info": 0, "warning": 1, "critical": 2}
Threshold = Callable[[str], Any]


@dataclass
class Regimen:
    """How an order reads against the regimens: ``findings`` (indicator, text); ``fix`` the
    nearest regimen of the same kind for an overdose (None: suggest nothing)."""
    shown: str
    findings: list[tuple[str, str]] = field(default_factory=list)
    fix: dict[str, Any] | None = None

    @property
    def level(self) -> str | None:
        return max((lv for lv, _ in self.findings), key=LEVELS.__getitem__, default=None)

    def add(self, level: str, text: str) -> None:
        self.findings.append((level, text))


def _above(value: float, limit: float, tol: float) -> bool:
    return value > limit * (1 + tol) + 1e-9


def _below(value: float, limit: float, tol: float) -> bool:
    return value < limit * (1 - tol) - 1e-9


def _band(out: Regimen, what: str, g_per_kg: float, critical: float, high: float, low: float | None,
          tol: float) -> bool:
    """Critical at or above ``critical``, warning above ``high`` (+tol), info below ``low`` (-tol);
    False when within the band."""
    if g_per_kg >= critical:
        out.add("critical", f"{what} {g_per_kg:.2f} g/kg (at or above {critical:g} g/kg)")
    elif _above(g_per_kg, high, tol):
        out.add("warning", f"{what} {g_per_kg:.2f} g/kg is above {high:g} g/kg")
    elif low is not None and _below(g_per_kg, low, tol):
        out.add("info", f"{what} {g_per_kg:.2f} g/kg is below {low:g} g/kg")
    else:
        return False
    return True


def ivig_regimen(dose: OrderedDose, weight_kg: float, t: Threshold) -> Regimen:
    """IVIG against induction (2 g/kg over 2-5 days, no day above 1 g/kg) and maintenance
    (0.4-1 g/kg per dose every 2-8 weeks). Doses more than ``course_gap_days`` apart
    are never summed; an order with no count or duration is judged per day only."""
    tol = float(t("ivig_dose_tolerance"))
    per_admin = dose.amount * weight_kg if dose.dimension == "per_kg" else dose.amount
    out = Regimen(shown=dose.shown)
    crit_day, crit_course = float(t("ivig_critical_day_g_per_kg")), float(t("ivig_critical_course_g_per_kg"))
    lo, hi = (float(v) for v in t("ivig_maintenance_g_per_kg"))
    if dose.interval_days > float(t("course_gap_days")):  # maintenance: one dose every few weeks
        per_kg, weeks = per_admin / weight_kg, dose.interval_days / 7
        i_lo, i_hi = (float(v) for v in t("ivig_maintenance_interval_days"))
        out.shown = f"{dose.shown} = {per_admin:.1f} g ({per_kg:.2f} g/kg) every {weeks:g} weeks"
        _band(out, "maintenance dose", per_kg, crit_day, hi, lo, tol)
        if dose.interval_days < i_lo:
            out.add("warning", f"every {dose.interval_days:g} days is more often than every {i_lo / 7:g} weeks")
        elif dose.interval_days > i_hi:
            out.add("info", f"every {weeks:g} weeks is less often than every {i_hi / 7:g} weeks")
        if out.level in ("warning", "critical"):
            out.fix = {"g": round(min(max(per_kg, lo), hi) * weight_kg, 1),
                       "interval_days": min(max(dose.interval_days, i_lo), i_hi)}
        return out
    daily = per_admin * dose.per_day
    daily_kg = daily / weight_kg
    days = dose.days
    if days is None and dose.course_total_g is not None:
        days = dose.course_total_g / daily if daily else None
    course_kg = None if days is None else (dose.course_total_g / weight_kg if dose.course_total_g is not None
                                           else daily_kg * days)
    day_max, target = float(t("ivig_day_max_g_per_kg")), float(t("ivig_induction_g_per_kg"))
    d_lo, d_hi = (int(v) for v in t("ivig_induction_days"))
    out.shown = f"{dose.shown} = {daily:.1f} g/day ({daily_kg:.2f} g/kg/day)" + (
        "" if days is None else f" x {days:g} days, course {daily * days:.0f} g ({course_kg:.2f} g/kg)")
    _band(out, "one day:", daily_kg, crit_day, day_max, None, tol)
    one_maintenance_dose = days is not None and days <= 1 and lo * (1 - tol) <= course_kg <= hi * (1 + tol)
    if course_kg is not None and not one_maintenance_dose:
        if not _band(out, "course", course_kg, crit_course, target, target, tol) and not d_lo <= round(days) <= d_hi:
            out.add("warning", f"{target:g} g/kg over {days:g} days (induction: over {d_lo}-{d_hi} days)")
    if out.level in ("warning", "critical"):
        n = min(max(round(days) if days else d_hi, d_lo), d_hi)  # keep the prescriber's schedule
        out.fix = {"g": round(target * weight_kg / n, 1), "days": n}
    return out


def rituximab_regimen(dose: OrderedDose, mg: float, bsa_m2: float | None, t: Threshold) -> Regimen:
    """Rituximab against (A) 1000 mg per dose, 2 doses 14 days apart and (B) 375 mg/m2 weekly
    x4. A flat dose fits A; a dose by mg/m2, or a mass dose within tolerance of 375 mg/m2 x
    BSA, is BSA-based and fits B. Overdose (a flat dose or course above A, a BSA dose above B):
    warning, with the nearest regimen of the same kind; below the regimens: info only."""
    flat, flat_tol = float(t("rituximab_flat_mg")), float(t("rituximab_flat_tolerance"))
    per_m2, bsa_tol = float(t("rituximab_mg_per_m2")), float(t("rituximab_bsa_tolerance"))
    a_doses, a_gap = int(t("rituximab_flat_doses")), float(t("rituximab_flat_interval_days"))
    b_doses, b_gap = int(t("rituximab_bsa_doses")), float(t("rituximab_bsa_interval_days"))
    by_bsa = per_m2 * bsa_m2 if bsa_m2 else None
    bsa_based = dose.dimension == "per_m2" or (by_bsa is not None and abs(mg - by_bsa) / by_bsa <= bsa_tol)
    count = dose.doses
    every = f"every {dose.interval_days:g} days" if dose.timing_stated else "once"
    out = Regimen(shown=f"{dose.shown} = {mg:.0f} mg {every}" + (f" x {count:g}" if count else ""))
    if bsa_based:
        m2 = mg / bsa_m2 if bsa_m2 else dose.amount
        if _above(m2, per_m2, bsa_tol):
            out.add("warning", f"{m2:.0f} mg/m2 per dose is above {per_m2:g} mg/m2")
        elif count is not None and count > b_doses:
            out.add("warning", f"{count:g} doses of {per_m2:g} mg/m2 (regimen B: {b_doses})")
        elif _below(m2, per_m2, bsa_tol) or (dose.timing_stated and dose.interval_days < b_gap):
            out.add("info", f"{m2:.0f} mg/m2 {every} differs from {per_m2:g} mg/m2 weekly x{b_doses}")
        if out.level == "warning" and by_bsa:
            out.fix = {"mg": round(by_bsa), "interval_days": b_gap, "count": b_doses, "regimen": "B"}
        return out
    course = mg * count if count is not None else None
    course_max = flat * a_doses * (1 + flat_tol)
    close = dose.timing_stated and dose.interval_days < a_gap - 1 and (count is None or count > 1)
    if _above(mg, flat, flat_tol):
        out.add("warning", f"{mg:.0f} mg per dose is above {flat:.0f} mg")
    elif course is not None and course > course_max:
        out.add("warning", f"course {course / 1000:g} g is above {a_doses} x {flat:.0f} mg")
    elif close and not _below(mg, flat, flat_tol):
        out.add("warning", f"{flat:.0f} mg {every} repeats sooner than every {a_gap:g} days")
    elif _below(mg, flat, flat_tol) or (count is not None and count > a_doses):
        out.add("info", f"{mg:.0f} mg {every}" + (f" x {count:g}" if count else "")
                + f" differs from {flat:.0f} mg x{a_doses}, {a_gap:g} days apart")
    if out.level == "warning":
        out.fix = {"mg": flat, "interval_days": a_gap, "count": a_doses, "regimen": "A"}
    return out


def pyridostigmine_regimen(dose_mg: float, dose: OrderedDose, kind: str, ceiling_mg_day: float,
                           t: Threshold) -> Regimen:
    """Pyridostigmine: immediate-release ``ir`` (single dose up to the IR maximum), extended-
    release ``er`` (a dose within the ER range, at most twice daily, at least the ER interval
    apart), parenteral (``parenteral``: a dose up to its maximum); the daily total up to
    ``ceiling_mg_day``."""
    out = Regimen(shown=f"{dose.shown} = {dose_mg:.0f} mg x {dose.per_day:g}/day = {dose_mg * dose.per_day:.0f} mg/day")
    if kind == "parenteral":
        limit = float(t("pyridostigmine_parenteral_max_mg"))
        if dose_mg > limit:
            out.add("warning", f"{dose_mg:g} mg parenteral dose is above {limit:g} mg")
        return out
    if kind == "er":
        lo, hi = (float(v) for v in t("pyridostigmine_er_mg_per_dose"))
        per_day, gap_h = float(t("pyridostigmine_er_max_per_day")), float(t("pyridostigmine_er_min_interval_hours"))
        if not lo <= dose_mg <= hi:
            out.add("warning", f"extended-release {dose_mg:g} mg per dose is outside {lo:g}-{hi:g} mg")
        if dose.per_day > per_day or dose.interval_days * 24 < gap_h:
            out.add("warning", f"extended-release {dose.per_day:g} times daily (at most {per_day:g}, "
                               f"at least {gap_h:g} h apart)")
    elif dose_mg > float(t("pyridostigmine_ir_max_mg_per_dose")):
        out.add("warning", f"{dose_mg:g} mg per dose is above {float(t('pyridostigmine_ir_max_mg_per_dose')):g} mg")
    if dose_mg * dose.per_day > ceiling_mg_day:
        out.add("warning", f"{dose_mg * dose.per_day:.0f} mg/day is above {ceiling_mg_day:.0f} mg/day")
    return out
