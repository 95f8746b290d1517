"""The few unit conversions the rules need (UCUM codes, plus the spellings
EHRs send). An unknown unit returns None: "cannot interpret", never a guess."""
from __future__ import annotations

# unit -> (dimension, factor to the dimension's base unit)
_UNITS: dict[str, tuple[str, float]] = {
    # mass, base g
    "g": ("mass", 1.0), "mg": ("mass", 1e-3), "ug": ("mass", 1e-6), "mcg": ("mass", 1e-6), "kg": ("mass", 1e3),
    "[lb_av]": ("mass", 453.59237), "lb": ("mass", 453.59237), "lbs": ("mass", 453.59237),
    "[oz_av]": ("mass", 28.349523125), "oz": ("mass", 28.349523125),
    "gram": ("mass", 1.0), "grams": ("mass", 1.0), "kilogram": ("mass", 1e3), "kilograms": ("mass", 1e3),
    "milligram": ("mass", 1e-3), "milligrams": ("mass", 1e-3), "pound": ("mass", 453.59237), "pounds": ("mass", 453.59237),
    # mass concentration, base mg/dL
    "mg/dl": ("conc", 1.0), "g/l": ("conc", 100.0), "mg/l": ("conc", 0.1), "g/dl": ("conc", 1000.0),
    "mg/ml": ("conc", 100.0),
    # length, base cm
    "cm": ("length", 1.0), "m": ("length", 100.0), "mm": ("length", 0.1), "[in_i]": ("length", 2.54),
    "in": ("length", 2.54), "inch": ("length", 2.54), "inches": ("length", 2.54),
    # volume, base mL
    "ml": ("volume", 1.0), "l": ("volume", 1000.0), "dl": ("volume", 100.0), "cc": ("volume", 1.0),
    # pressure, base cm[H2O]
    "cm[h2o]": ("pressure", 1.0), "cmh2o": ("pressure", 1.0), "cm h2o": ("pressure", 1.0),
    "kpa": ("pressure", 1000 / 98.0665),  # 1 cm H2O = 98.0665 Pa (conventional, as UCUM defines it)
    # volume per body weight (FVC), base mL/kg
    "ml/kg": ("vol_per_kg", 1.0), "l/kg": ("vol_per_kg", 1000.0),
    # area, base m2
    "m2": ("area", 1.0), "m^2": ("area", 1.0), "m²": ("area", 1.0),
    # dose per body weight, base g/kg
    "g/kg": ("per_kg", 1.0), "mg/kg": ("per_kg", 1e-3),
    # dose per body surface, base mg/m2
    "mg/m2": ("per_m2", 1.0), "mg/m^2": ("per_m2", 1.0),
    # dose forms counted (tablets x strength: hooks.fhir_read.strength_mg), base one unit of the form;
    # UCUM annotations in braces ({pill}, {tbl}) are read without them
    "pill": ("count", 1.0), "pills": ("count", 1.0), "tbl": ("count", 1.0), "tab": ("count", 1.0),
    "tabs": ("count", 1.0), "tablet": ("count", 1.0), "tablets": ("count", 1.0), "capsule": ("count", 1.0),
    "capsules": ("count", 1.0), "cap": ("count", 1.0), "caps": ("count", 1.0), "1": ("count", 1.0),
}
BASE = {"mass": "g", "conc": "mg/dL", "length": "cm", "volume": "mL", "pressure": "cm[H2O]", "area": "m2",
        "per_kg": "g/kg", "per_m2": "mg/m2", "count": "1", "vol_per_kg": "mL/kg"}


def _key(unit: str | None) -> str | None:
    if not unit:
        return None
    return unit.strip().lower().replace("{", "").replace("}", "")


def dimension(unit: str | None) -> str | None:
    hit = _UNITS.get(_key(unit) or "")
    return hit[0] if hit else None


def convert(value: float, unit: str | None, target: str) -> float | None:
    """``value`` in ``unit`` expressed in ``target``; None if either unit is unknown
    or they measure different things."""
    src, dst = _UNITS.get(_key(unit) or ""), _UNITS.get(_key(target) or "")
    if src is None or dst is None or src[0] != dst[0]:
        return None
    return value * src[1] / dst[1]
