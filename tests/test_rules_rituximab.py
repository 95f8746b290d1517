"""Rituximab rules, state in, card out (hooks/rules/rituximab.py)."""
from __future__ import annotations

from .test_rules_common import actions, evaluate, fx, text


def ritux(mg=1000, **kw):
    kw.setdefault("period", 14)
    kw.setdefault("count", 2)
    return fx.med(fx.RITUXIMAB, dose=fx.dosage(mg, kw.pop("unit", "mg"), **kw))


def test_screening_orders_each_missing_test_and_never_a_positive_one():
    card = evaluate("rituximab-screening-incomplete", fx.base(), [ritux()])
    assert len(card.suggestions) == 7
    old_positive = fx.screening(days_ago=500, hbsag="Positive")
    card = evaluate("rituximab-screening-incomplete", fx.base(*old_positive), [ritux()])
    assert "Order HBsAg" not in text(card) and "Order IgG" in text(card)


def test_hbv_positive_at_any_date_is_critical_and_cites_aasld():
    card = evaluate("rituximab-hbv-positive", fx.base(*fx.screening(days_ago=900, anti_hbc="Positive")), [ritux()])
    assert card.indicator == "critical" and "AASLD" in card.detail


def test_tb_positive_warning_indeterminate_info():
    assert evaluate("rituximab-tb-positive", fx.base(*fx.screening(tb="Positive")), [ritux()]).indicator == "warning"
    assert evaluate("rituximab-tb-positive", fx.base(*fx.screening(tb="Indeterminate")), [ritux()]).indicator == "info"
    assert evaluate("rituximab-tb-positive", fx.base(*fx.screening()), [ritux()]) is None


def test_regimens_fit_quietly():
    for draft in (ritux(), ritux(count=1), ritux(700, period=1, period_unit="wk", count=4),
                  ritux(375, unit="mg/m2", period=1, period_unit="wk", count=4), ritux(1, unit="g")):
        assert evaluate("rituximab-dose-check", fx.base(), [draft]) is None, draft["dosageInstruction"]


def test_1000mg_weekly_x4_is_an_overdose_fixed_to_regimen_a():
    card = evaluate("rituximab-dose-check", fx.base(), [ritux(period=1, period_unit="wk", count=4)])
    assert card.indicator == "warning" and actions(card) == ["update"]
    repeat = card.suggestions[0].actions[0].resource["dosageInstruction"][0]["timing"]["repeat"]
    assert (repeat["period"], repeat["periodUnit"], repeat["count"]) == (14, "d", 2)


def test_a_bsa_overdose_is_fixed_to_regimen_b():
    card = evaluate("rituximab-dose-check", fx.base(), [ritux(450, unit="mg/m2", period=1, period_unit="wk", count=4)])
    assert card.indicator == "warning"
    assert card.suggestions[0].actions[0].resource["dosageInstruction"][0]["timing"]["repeat"]["count"] == 4


def test_500mg_day_1_and_15_is_info_with_no_suggestion():
    card = evaluate("rituximab-dose-check", fx.base(), [ritux(500)])
    assert card.indicator == "info" and card.suggestions == []


def test_a_dose_only_the_bsa_could_clear_waits_for_the_bsa():
    chart = fx.base(cm=None)
    assert evaluate("rituximab-dose-check", chart, [ritux(700)]) is None
    assert evaluate("dose-weight-missing", chart, [ritux(700)]).indicator == "info"


def test_safety_card_once_per_request():
    card = evaluate("rituximab-safety", fx.base(), [ritux(), ritux()])
    assert card.indicator == "info" and "PML" in card.summary
