"""Checkpoint inhibitor rules, state in, card out (hooks/rules/ici.py)."""
from __future__ import annotations

from .test_rules_common import actions, evaluate, fx, text


def FVC_LOW(days):
    return fx.lab("19868-9", "Forced vital capacity", days, **fx.qty(1.2, "L"))  # 16.7 mL/kg at 72 kg
PREDNISONE = fx.cc(fx.ATC, "H02AB07", "prednisone", "Prednisone tablet")


def test_grade3_ici_related_mg_60_days_ago_still_stops_the_ici():
    chart = fx.base(fx.admin(fx.PEMBRO, 120), FVC_LOW(60), mg_days=75)
    card = evaluate("ici-contraindicated", chart, [fx.med(fx.PEMBRO)])
    assert card.indicator == "critical" and actions(card) == ["delete"]
    assert evaluate("ici-preexisting-mg", chart, [fx.med(fx.PEMBRO)]) is None


def test_rechallenge_13_months_after_the_last_dose_is_judged_against_that_history():
    chart = fx.base(fx.admin(fx.PEMBRO, 430), FVC_LOW(395), mg_days=400)
    assert evaluate("ici-contraindicated", chart, [fx.med(fx.PEMBRO)]).indicator == "critical"


def test_grade2_ici_related_mg_holds_and_says_grade_2():
    chart = fx.ici_related(fx.grade(2))
    card = evaluate("ici-contraindicated", chart, [fx.med(fx.PEMBRO)])
    assert card.indicator == "warning" and "grade 2" in text(card).lower()


def test_a_steroid_started_before_the_mg_is_not_a_taper():
    chart = fx.ici_related(fx.med(PREDNISONE, status="active", days_ago=800, dose=fx.dosage(10, "mg")))
    assert evaluate("ici-contraindicated", chart, [fx.med(fx.PEMBRO)]) is None


def test_a_steroid_for_the_mg_above_10mg_holds_without_stating_a_grade():
    chart = fx.ici_related(fx.med(PREDNISONE, status="active", days_ago=20, dose=fx.dosage(40, "mg")))
    card = evaluate("ici-contraindicated", chart, [fx.med(fx.PEMBRO)])
    assert card.indicator == "warning" and "Grade 2" not in text(card) and "40 mg/day" in text(card)


def test_preexisting_mg_gets_its_own_warning_without_suggestions():
    card = evaluate("ici-preexisting-mg", fx.base(), [fx.med(fx.PEMBRO)])
    assert card.indicator == "warning" and card.suggestions == [] and "myocarditis" in card.summary
    assert evaluate("ici-contraindicated", fx.base(), [fx.med(fx.PEMBRO)]) is None


def test_discontinue_stops_an_on_hold_order_after_grade_3_history():
    chart = fx.base(fx.admin(fx.PEMBRO, 120), FVC_LOW(60), fx.med(fx.PEMBRO, status="on-hold", days_ago=100), mg_days=75)
    card = evaluate("ici-discontinue", chart, hook="patient-view")
    update = card.suggestions[0].actions[0].resource
    assert card.indicator == "critical" and update["status"] == "stopped" and update["statusReason"]["text"]


def test_discontinue_holds_an_active_order_at_grade_2_and_leaves_a_held_one():
    active = fx.base(fx.grade(2), fx.med(fx.PEMBRO, status="active", days_ago=20))
    assert evaluate("ici-discontinue", active, hook="patient-view").indicator == "warning"
    held = fx.base(fx.grade(2), fx.med(fx.PEMBRO, status="on-hold", days_ago=20))
    assert evaluate("ici-discontinue", held, hook="patient-view") is None
