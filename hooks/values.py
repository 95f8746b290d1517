"""Reading an Observation's result: quantities normalised to the concept's
unit, strings like "<7 mg/dL" or "Positive", coded results, reference ranges
and Observation.interpretation."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import units
from .fhir_model import FHIRObject, get
from .fhir_read import cc_text, codings

NUMBER = re.compile(r"^\s*(<=|>=|<|>)?\s*(-?\d+(?:\.\d+)?)\s*(.*?)\s*$")
NEGATIVE = re.compile(r"\b(negative|non-?reactive|not detected|undetected|absent)\b")
POSITIVE = re.compile(r"\b(positive|reactive|detected|present)\b")
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
    if NEGATIVE.search(low):
        return "negative"
    if POSITIVE.search(low):
        return "positive"
    return None


def _quantity(value: Any, unit: str | None, target: str | None, comparator: str | None = None) -> Reading:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return Reading(problem="the result has no number")
    shown = f"{comparator or ''}{number:g} {unit or ''}".strip()
    if target is None:
        return Reading(value=number, unit=unit, comparator=comparator, text=shown)
    converted = units.convert(number, unit, target)
    if converted is None:
        return Reading(text=shown, comparator=comparator,
                       problem=f"unit '{unit or '(none)'}' cannot be interpreted as {target}")
    return Reading(value=converted, unit=target, comparator=comparator, text=shown)


def read_value(source: Any, target_unit: str | None) -> Reading | None:
    """The value[x] of an Observation or component (plain JSON or struct); None when it has none."""
    q = get(source, "valueQuantity")
    if isinstance(q, FHIRObject):
        return _quantity(get(q, "value"), get(q, "code") or get(q, "unit"), target_unit, get(q, "comparator"))
    value_string = get(source, "valueString")
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
    coded = get(source, "valueCodeableConcept")
    if isinstance(coded, FHIRObject):
        text = cc_text(coded) or ",".join(str(c) for _, c, _ in codings(coded))
        return Reading(text=text, qualitative=qualitative(text))
    integer = get(source, "valueInteger")
    if isinstance(integer, int):
        return Reading(value=float(integer), text=str(integer))
    boolean = get(source, "valueBoolean")
    if isinstance(boolean, bool):
        return Reading(text=str(boolean).lower(), qualitative="positive" if boolean else "negative")
    return None


def interpretation(obs: Any) -> str | None:
    for item in get(obs, "interpretation") or ():
        for _, code, display in codings(item):
            if code in INTERPRETATION_CODES:
                return INTERPRETATION_CODES[code]
        text = cc_text(item).lower()
        for word in ("positive", "negative", "indeterminate", "high", "low", "normal", "abnormal"):
            if word in text:
                return word
    return None


def reference_range(obs: Any, target_unit: str | None) -> tuple[float | None, float | None]:
    for rng in get(obs, "referenceRange") or ():
        if not isinstance(rng, dict):
            continue
        bounds = []
        for key in ("low", "high"):
            q = rng.get(key)
            if isinstance(q, dict) and q.get("value") is not None:
                unit = q.get("code") or q.get("unit")
                try:
                    value = float(q["value"])
                except (TypeError, ValueError):
                    bounds.append(None)
                    continue
                bounds.append(units.convert(value, unit, target_unit) if target_unit else value)
            else:
                bounds.append(None)
        if any(b is not None for b in bounds):
            return bounds[0], bounds[1]
    return None, None
