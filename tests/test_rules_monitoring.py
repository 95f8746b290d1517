"""Workup and monitoring rules, state in, card out (hooks/rules/monitoring.py)."""
from __future__ import annotations

from .test_rules_common import evaluate, fx, text

TROPONIN_HIGH = fx.lab("10839-9", "Troponin I.cardiac", 1, **fx.qty(0.9, "ng/mL"),
                       referenceRange=[{"high": {"value": 0.04, "unit": "ng/mL", "system": fx.UCUM, "code": "ng/mL"}}])


def test_workup_only_in_ici_related_mg_and_one_time_antibodies_not_reordered():
    assert evaluate("mg-workup-incomplete", fx.base(fx.grade(3)), hook="patient-view") is None
    achr = fx.lab("11034-6", "Acetylcholine receptor binding Ab", 700, **fx.qty(2.1, "nmol/L"))
    card = evaluate("mg-workup-incomplete", fx.ici_related(fx.grade(2), achr), hook="patient-view")
    assert card.indicator == "info" and "Order AChR" not in text(card) and "Order CK" in text(card)


def test_myocarditis_needs_ici_related_mg():
    assert evaluate("myocarditis-check", fx.base(fx.grade(3)), hook="patient-view") is None
    assert evaluate("myocarditis-check", fx.ici_related(), hook="patient-view").indicator == "warning"
    card = evaluate("myocarditis-check", fx.ici_related(TROPONIN_HIGH), hook="patient-view")
    assert card.indicator == "critical" and "hold" in card.detail


def test_monitoring_never_on_a_first_order_or_course():
    first = fx.base(fx.med(fx.IVIG, status="active", days_ago=2, dose=fx.dosage(28.8, "g", duration=5)))
    assert evaluate("immunotherapy-monitoring-due", first, hook="patient-view") is None
    one_course = fx.base(fx.admin(fx.IVIG, 30), fx.admin(fx.IVIG, 29))
    assert evaluate("immunotherapy-monitoring-due", one_course, hook="patient-view") is None


def test_ivig_maintenance_asks_for_an_igg_trough_only():
    chart = fx.base(fx.admin(fx.IVIG, 120), fx.admin(fx.IVIG, 60))
    card = evaluate("immunotherapy-monitoring-due", chart, hook="patient-view")
    assert card.indicator == "info" and [s.label for s in card.suggestions] == ["Order IgG"]
    done = chart + [fx.lab("2465-3", "IgG", 30, **fx.qty(950, "mg/dL"))]
    assert evaluate("immunotherapy-monitoring-due", done, hook="patient-view") is None


def test_rituximab_maintenance_after_six_months_asks_for_blood_count_and_chemistry():
    chart = fx.base(fx.admin(fx.RITUXIMAB, 300), fx.admin(fx.RITUXIMAB, 30))
    card = evaluate("immunotherapy-monitoring-due", chart, hook="patient-view")
    assert card is not None and "blood count" in text(card)
    assert evaluate("immunotherapy-monitoring-due", fx.base(fx.admin(fx.RITUXIMAB, 30)), hook="patient-view") is None


def test_a_recurring_ivig_order_on_the_chart_is_maintenance():
    """Read from the order as the EHR sent it (the readers hold a struct; the dose is read from the JSON)."""
    every_4_weeks = fx.dosage(28.8, "g", period=4, period_unit="wk")
    chart = fx.base(fx.med(fx.IVIG, status="active", days_ago=2, dose=every_4_weeks))
    card = evaluate("immunotherapy-monitoring-due", chart, hook="patient-view")
    assert card is not None and "Recurring IVIG order" in text(card)
    assert [s.label for s in card.suggestions] == ["Order IgG"]
