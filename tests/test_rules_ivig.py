"""IVIG rules, state in, card out (hooks/rules/ivig.py)."""
from __future__ import annotations

from .test_rules_common import actions, evaluate, fx, text

IVIG = fx.ivig_order


def test_iga_unknown_is_a_warning_with_an_order_and_info_after_uneventful_courses():
    card = evaluate("ivig-iga-unknown", fx.base(), [IVIG()])
    assert card.indicator == "warning" and actions(card) == ["create"]
    card = evaluate("ivig-iga-unknown", fx.base(fx.admin(fx.IVIG, 90)), [IVIG()])
    assert card.indicator == "info" and "no recorded reaction" in card.detail


def test_the_drafted_order_itself_is_no_earlier_course():
    draft = IVIG()
    chart = fx.base(dict(draft, status="active"))  # the same order on the chart (a replayed or re-sent order)
    assert evaluate("ivig-iga-unknown", chart, [draft]).indicator == "warning"


def test_iga_at_any_date_answers_the_one_time_question():
    assert evaluate("ivig-iga-unknown", fx.base(fx.iga(180, days_ago=900)), [IVIG()]) is None


def test_iga_deficiency_standard_product_warning_with_removal():
    card = evaluate("ivig-iga-deficient", fx.base(fx.iga(4)), [IVIG()])
    assert card.indicator == "warning" and actions(card) == ["delete"]
    assert "plasma exchange" in text(card)


def test_a_low_flag_alone_is_not_deficiency():
    assert evaluate("ivig-iga-deficient", fx.base(fx.iga(50)), [IVIG()]) is None


def test_iga_depleted_product_is_info_and_kept():
    product = fx.cc(fx.RXN, "1809738", "immunoglobulin G, human 10000 MG Injection [Gammagard]", "Gammagard S/D")
    draft = fx.med(product, dose=fx.dosage(28.8, "g", duration=5))
    card = evaluate("ivig-iga-deficient", fx.base(fx.iga(4)), [draft])
    assert card.indicator == "info" and card.suggestions == []


def test_anti_iga_antibodies_make_a_standard_product_critical():
    anti = fx.lab("44583-3", "IgA Ab [Presence] in Serum or Plasma", 20,
                  valueCodeableConcept=fx.cc(fx.SCT, "10828004", "Positive"))
    assert evaluate("ivig-iga-deficient", fx.base(fx.iga(4), anti), [IVIG()]).indicator == "critical"


def test_induction_and_maintenance_regimens_are_quiet():
    for draft in (IVIG(), IVIG(1, "g/kg", duration=2), IVIG(1, "g/kg", duration=None, period=4, period_unit="wk"),
                  IVIG(0.4, "g/kg", duration=None, period=3, period_unit="wk")):
        assert evaluate("ivig-dose-check", fx.base(), [draft]) is None, draft["dosageInstruction"]


def test_an_overdose_keeps_the_prescribers_schedule():
    card = evaluate("ivig-dose-check", fx.base(), [IVIG(1.5, "g/kg", duration=2)])
    assert card.indicator == "critical"
    dose = card.suggestions[0].actions[0].resource["dosageInstruction"][0]
    assert dose["timing"]["repeat"]["boundsDuration"]["value"] == 2
    assert dose["doseAndRate"][0]["doseQuantity"]["value"] == 72.0  # 1 g/kg/day x2 at 72 kg


def test_a_warning_above_the_course_and_info_below_it():
    assert evaluate("ivig-dose-check", fx.base(), [IVIG(40)]).indicator == "warning"  # 2.8 g/kg
    card = evaluate("ivig-dose-check", fx.base(), [IVIG(0.4, "g/kg", duration=3)])
    assert card.indicator == "info" and card.suggestions == []


def test_a_maintenance_dose_above_one_g_per_kg_is_fixed_on_its_interval():
    card = evaluate("ivig-dose-check", fx.base(), [IVIG(1.5, "g/kg", duration=None, period=4, period_unit="wk")])
    assert card.indicator == "warning"
    repeat = card.suggestions[0].actions[0].resource["dosageInstruction"][0]["timing"]["repeat"]
    assert repeat["period"] == 28 and "count" not in repeat


def test_renal_check_info_when_missing_warning_when_low_quiet_when_normal():
    card = evaluate("ivig-renal-check", fx.base(), [IVIG()])
    assert card.indicator == "info" and actions(card) == ["create"]
    assert evaluate("ivig-renal-check", fx.base(fx.egfr(45)), [IVIG()]).indicator == "warning"
    assert evaluate("ivig-renal-check", fx.base(fx.egfr(90)), [IVIG()]) is None


def test_plasma_exchange_after_ivig_counts_from_the_last_dose():
    drafts = [fx.plex_request()]
    assert evaluate("plex-after-ivig", fx.base(fx.admin(fx.IVIG, 20), fx.admin(fx.IVIG, 10)), drafts) is not None
    assert evaluate("plex-after-ivig", fx.base(fx.admin(fx.IVIG, 40)), drafts) is None
    # an active IVIG order with no dose recorded as given yet: its doses may be under way
    active = evaluate("plex-after-ivig", fx.base(fx.med(fx.IVIG, status="active", days_ago=3)), drafts)
    assert active is not None and "IVIG order active" in text(active)
