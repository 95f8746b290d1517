"""Reading an Observation's result: quantities normalised to the concept's
unit, strings like "<7 mg/dL" or "Positive", coded results, reference ranges
and Observation.interpretation."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from . import units
from .fhir_model import Valued
from .fhir_read import cc_text, codings

NUMBER = re.compile(r"^\s*(<=|>=|<|>)?\s*(-?\d+(?:\.\d+)?)\s*(.*?)\s*$")
NEGATIVE = re.compile(r"\b(negative|non-?reactive|not detected|undetected|absent|none|denies|denied)\b"
                      r"|^\s*(no|nil)\s*\.?\s*$")
POSITIVE = re.compile(r"\b(positive|reactive|detected|present)\b|^\s*yes\s*\.?\s*$")
# a positive word negated earlier in its clause: "not reactive", "no HBsAg detected", "not present"
NEGATED = re.compile(r"\b(not|no|non|without|denies)\b[^.;,]*\b(positive|reactive|detected|present)\b")
LOINC, SCT = "http://loinc.org", "http://snomed.info/sct"
# Coded answers, read whatever their display says (verified 2026-12-01):
# LOINC LA33-6 Yes, LA32-8 No: answer list LL2828-3,
#   https://hl7.org/fhir/uv/sdc/ValueSet-questionnaire-sdc-profile-example-loinc_ll2828-3.html
# LOINC LA11882-0 Detected, LA11883-8 Not detected: answer list LL1055-4; LA6576-8 Positive, LA6577-6 Negative
#   (and LA11883-8): WHO SMART DDCC ConceptMap lab-test-type-covid19-loinc-to-icd11 (WorldHealthOrganization/ddcc)
# SNOMED CT qualifier values 10828004 Positive, 260385009 Negative, 260373001 Detected, 260415000 Not detected,
#   11214006 Reactive, 131194007 Non-reactive: WHO SMART DDCC ValueSet lab-test-qual-result-snomed;
#   HL7 COVID-19 Library ValueSet covid19-pos-neg-vs (https://hl7.org/fhir/us/covid19library/)
ANSWER_CODES = {(LOINC, "LA33-6"): "positive", (LOINC, "LA32-8"): "negative",
                (LOINC, "LA6576-8"): "positive", (LOINC, "LA6577-6"): "negative",
                (LOINC, "LA11882-0"): "positive", (LOINC, "LA11883-8"): "negative",
                (SCT, "10828004"): "positive", (SCT, "260385009"): "negative",
                (SCT, "260373001"): "positive", (SCT, "260415000"): "negative",
                (SCT, "11214006"): "positive", (SCT, "131194007"): "negative"}
INDETERMINATE = re.compile(r"\b(indeterminate|equivocal|borderline|inconclusive)\b")
# HL7 v3 ObservationInterpretation codes (FHIR R4 ValueSet observation-interpretation)
INTERPRETATION_CODES = {"H": "high", "HH": "high", "HU": "high", "L": "low", "LL": "low", "LU": "low",
                        "N": "normal", "A": "abnormal", "AA": "abnormal", "POS": "positive", "NEG": "negative",
                        "IND": "indeterminate", "DET": "positive", "ND": "negative", "R": "positive",
                        "NR": "negative", "E": "indeterminate"}


@dataclass
class Reading:
    value: float | None = None          # normalised to the concept unit, when it has one
    unit: str | None = None
    comparator: str | None = None
    text: str = ""                      # the result as the chart shows it
    qualitative: str | None = None      # positive | negative | indeterminate
    problem: str | None = None          # why a value could not be interpreted


def qualitative(text: str) -> str | None:
    low = text.lower()
    if INDETERMINATE.search(low):
        return "indeterminate"
    if NEGATIVE.search(low) or NEGATED.search(low):
        return "negative"
    if POSITIVE.search(low):
        return "positive"
    return None


OUT_OF_RANGE = "the number is too large to be a measurement"


def to_number(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a bool, a string, an integer or
    float too large for a float, infinity)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        result = float(value)
    except (ValueError, OverflowError):
        return None
    return result if math.isfinite(result) else None


def _too_large(value: Any) -> bool:
    """A number that is a number but no finite float holds (10^400 as an integer, 1e400 as text)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return to_number(value) is None
    try:
        return isinstance(value, (float, str)) and math.isinf(float(value))
    except ValueError:
        return False


def _quantity(value: Any, unit: str | None, target: str | None, comparator: str | None = None) -> Reading:
    num = to_number(value)
    if num is None and _too_large(value):  # a result, whose number cannot be read
        return Reading(text=f"(a number too large to read) {unit or ''}".strip(), problem=OUT_OF_RANGE)
    if num is None:
        return Reading(problem="the result has no number")
    shown = f"{comparator or ''}{num:g} {unit or ''}".strip()
    if target is None:
        return Reading(value=num, unit=unit, comparator=comparator, text=shown)
    converted = units.convert(num, unit, target)
    if converted is None:
        return Reading(text=shown, comparator=comparator,
                       problem=f"unit '{unit or '(none)'}' cannot be interpreted as {target}")
    if not math.isfinite(converted):
        return Reading(text=shown, comparator=comparator, problem=OUT_OF_RANGE)
    return Reading(value=converted, unit=target, comparator=comparator, text=shown)


def read_value(source: Valued, target_unit: str | None) -> Reading | None:
    """The value[x] of an Observation or component; None when it has none."""
    q = source.valueQuantity
    if q is not None:
        return _quantity(q.value, q.code or q.unit, target_unit, q.comparator)
    value_string = source.valueString
    if isinstance(value_string, str):
        text = value_string.strip()
        m = NUMBER.match(text)
        if m:
            comparator, number, unit = m.group(1), m.group(2), m.group(3) or None
            reading = _quantity(number, unit, target_unit if unit else None, comparator)
            if target_unit and not unit:
                reading.problem = f"result '{text}' has no unit"
                reading.value = None
            reading.text = text
            return reading
        return Reading(text=text, qualitative=qualitative(text))
    coded = source.valueCodeableConcept
    if coded is not None:
        answers = list(codings(coded))
        answer = next((ANSWER_CODES[(s, c)] for s, c, _ in answers if (s, c) in ANSWER_CODES), None)
        text = cc_text(coded) or ",".join(f"{answer} ({c})" if answer else str(c) for _, c, _ in answers)
        return Reading(text=text, qualitative=answer or qualitative(text))
    integer = source.valueInteger
    if isinstance(integer, int) and not isinstance(integer, bool):
        value = to_number(integer)
        if value is None:
            return Reading(text="(a number too large to show)", problem=OUT_OF_RANGE)
        return Reading(value=value, text=str(integer))
    boolean = source.valueBoolean
    if isinstance(boolean, bool):
        return Reading(text=str(boolean).lower(), qualitative="positive" if boolean else "negative")
    return None


def interpretation(obs: Valued) -> str | None:
    """Observation.interpretation (plain JSON in the model: read only for the few results a rule reaches)."""
    items = obs.interpretation
    for item in items if isinstance(items, list) else ():
        for _, code, _display in codings(item):
            if code in INTERPRETATION_CODES:
                return INTERPRETATION_CODES[code]
        text = cc_text(item).lower()
        for word in ("positive", "negative", "indeterminate", "high", "low", "normal", "abnormal"):
            if word in text:
                return word
    return None


def reference_range(obs: Valued, target_unit: str | None) -> tuple[float | None, float | None]:
    """The first referenceRange (plain JSON in the model) with a bound that reads in ``target_unit``."""
    ranges = obs.referenceRange
    for rng in ranges if isinstance(ranges, list) else ():
        if not isinstance(rng, dict):
            continue
        bounds = []
        for key in ("low", "high"):
            q = rng.get(key)
            value = to_number(q.get("value")) if isinstance(q, dict) else None
            if value is None:
                bounds.append(None)
                continue
            unit = q.get("code") or q.get("unit")
            bound = units.convert(value, unit, target_unit) if target_unit else value
            bounds.append(bound if bound is not None and math.isfinite(bound) else None)
        if any(b is not None for b in bounds):
            return bounds[0], bounds[1]
    return None, None
