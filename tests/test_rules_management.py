"""Management rules, state in, card out (hooks/rules/management.py)."""
from __future__ import annotations

from .test_rules_common import evaluate, fx, text


def CRISIS(days):
    return fx.condition(fx.cc(fx.SCT, "80976008", "Myasthenic crisis (disorder)"), days_ago=days)
def MGFA(c):
    return fx.obs(fx.cc(fx.LOCAL, "mgfa-class", "MGFA clinical classification"), 3, valueString=c)


def test_severe_mg_offers_ivig_or_plasma_exchange_and_iga():
    card = evaluate("mg-severe-management", fx.base(CRISIS(5)), hook="patient-view")
    labels = [s.label for s in card.suggestions]
    assert card.indicator == "critical" and any("IVIG 28.8 g" in x for x in labels)
    assert any("plasma exchange" in x for x in labels) and any("IgA" in x for x in labels)
    assert "checkpoint" not in card.detail.lower()


def test_severe_mg_with_iga_deficiency_gets_no_standard_ivig():
    iga_def = fx.condition(fx.cc(fx.ICD, "D80.2", "Selective deficiency of immunoglobulin A [IgA]"))
    card = evaluate("mg-severe-management", fx.base(fx.grade(3), iga_def), hook="patient-view")
    assert not any("IVIG" in s.label for s in card.suggestions) and "IgA-depleted" in card.detail


def test_severe_mg_with_rescue_under_way_suggests_none():
    card = evaluate("mg-severe-management", fx.base(fx.grade(3), fx.admin(fx.IVIG, 3)), hook="patient-view")
    assert card.suggestions == []


def test_severe_mg_names_the_ici_only_with_exposure():
    card = evaluate("mg-severe-management", fx.ici_related(fx.grade(3)), hook="patient-view")
    assert "permanently discontinue" in card.detail


def test_mgfa_class_alone_outside_ici_related_mg_raises_no_card():
    assert evaluate("mg-severe-management", fx.base(MGFA("IIIa")), hook="patient-view") is None
    assert evaluate("mg-moderate-management", fx.base(MGFA("IIa")), hook="patient-view") is None


def test_moderate_management_only_in_ici_related_mg():
    card = evaluate("mg-moderate-management", fx.ici_related(fx.grade(2)), hook="patient-view")
    assert card.indicator == "warning" and "35 mg" in text(card)  # 0.5 mg/kg x 72 kg, rounded to 5 mg
    assert evaluate("mg-moderate-management", fx.base(fx.grade(2)), hook="patient-view") is None


def test_resolved_mg_gets_no_management_card():
    fvc_low = fx.lab("19868-9", "Forced vital capacity", 1, **fx.qty(1.2, "L"))  # grades only an MG that is present
    chart = [fx.mg(status="resolved"), fx.weight(), fx.height(), fvc_low]
    assert evaluate("mg-severe-management", chart, hook="patient-view") is None


def test_rituximab_considered_14_days_after_ivig_started():
    chart = fx.base(*[fx.admin(fx.IVIG, d) for d in (34, 33, 32, 31, 30)], fx.grade(3, 2))
    card = evaluate("rituximab-consider", chart, hook="patient-view")
    assert card.indicator == "warning" and len(card.suggestions) == 2
    early = fx.base(*[fx.admin(fx.IVIG, d) for d in (6, 5, 4)], fx.grade(3, 1))
    assert evaluate("rituximab-consider", early, hook="patient-view") is None
