"""Drug rules, state in, card out (hooks/rules/drugs.py): MG-worsening drugs by
class, route and chronicity; pyridostigmine regimens; steroid initiation."""
from __future__ import annotations

import pytest

from .test_rules_common import actions, evaluate, fx, text

CIPRO = fx.cc(fx.RXN, "2551", "ciprofloxacin")
METOPROLOL = fx.cc(fx.RXN, "6918", "metoprolol", "Metoprolol succinate 50 mg ER tablet")
PREDNISONE = fx.cc(fx.ATC, "H02AB07", "prednisone", "Prednisone 20 mg tablet")


def test_a_new_drug_is_a_warning_critical_at_grade_3_with_a_delete():
    card = evaluate("mg-exacerbating-drug", fx.base(), [fx.med(CIPRO)])
    assert card.indicator == "warning" and actions(card) == ["delete"]
    assert evaluate("mg-exacerbating-drug", fx.base(fx.grade(3)), [fx.med(CIPRO)]).indicator == "critical"


def test_a_chronic_beta_blocker_is_never_critical_nor_stopped_on_patient_view():
    chart = fx.base(fx.grade(3), fx.med(METOPROLOL, status="active", days_ago=300))
    card = evaluate("mg-exacerbating-drug", chart, hook="patient-view")
    assert card.indicator == "warning" and card.suggestions == [] and "taper" in card.detail
    card = evaluate("mg-exacerbating-drug", fx.base(fx.med(METOPROLOL, status="active", days_ago=300)),
                    hook="patient-view")
    assert card.indicator == "info"


def test_a_new_antibiotic_on_the_list_offers_stop_with_a_reason():
    card = evaluate("mg-exacerbating-drug", fx.base(fx.med(CIPRO, status="active", days_ago=3)), hook="patient-view")
    update = card.suggestions[0].actions[0]
    assert update.type == "update" and update.resource["status"] == "stopped" and update.resource["statusReason"]


def test_routes_eye_drops_info_ear_drops_none():
    timolol = fx.med(fx.cc(fx.RXN, "10600", "timolol", "Timolol 0.5% ophthalmic solution"),
                     dose=fx.dosage(1, "drop", route="Ophthalmic"))
    card = evaluate("mg-exacerbating-drug", fx.base(fx.grade(3)), [timolol])
    assert card.indicator == "info" and card.suggestions == []
    otic = fx.med(fx.cc(fx.RXN, "2551", "ciprofloxacin", "Ciprofloxacin otic"), dose=fx.dosage(4, "drop", route="Otic"))
    assert evaluate("mg-exacerbating-drug", fx.base(), [otic]) is None


def test_telithromycin_is_critical_and_a_neuromuscular_blocker_info_without_delete():
    card = evaluate("mg-exacerbating-drug", fx.base(), [fx.med(fx.cc(fx.ATC, "J01FA15", "telithromycin"))])
    assert card.indicator == "critical" and "label" in card.detail.lower()
    card = evaluate("mg-exacerbating-drug", fx.base(fx.grade(4)), [fx.med(fx.cc(text="rocuronium 10 mg/mL"))])
    assert card.indicator == "info" and card.suggestions == []


def test_pyridostigmine_ir_above_120_offered_120_on_its_frequency():
    card = evaluate("pyridostigmine-dose-check", fx.base(), [fx.med(fx.PYRIDO, dose=fx.dosage(180, "mg", freq=4))])
    new = card.suggestions[0].actions[0].resource["dosageInstruction"][0]
    assert new["doseAndRate"][0]["doseQuantity"]["value"] == 120 and new["timing"]["repeat"]["frequency"] == 4


def test_pyridostigmine_er_at_bedtime_is_quiet_and_never_split():
    timespan = fx.cc(text="Mestinon Timespan 180 mg extended-release tablet")
    assert evaluate("pyridostigmine-dose-check", fx.base(), [fx.med(timespan, dose=fx.dosage(180, "mg"))]) is None
    card = evaluate("pyridostigmine-dose-check", fx.base(), [fx.med(timespan, dose=fx.dosage(180, "mg", freq=3))])
    assert card.indicator == "warning" and card.suggestions == []


def test_pyridostigmine_daily_ceiling_depends_on_ici_related_mg():
    draft = fx.med(fx.PYRIDO, dose=fx.dosage(120, "mg", freq=5))  # 600 mg/day
    assert evaluate("pyridostigmine-dose-check", fx.base(), [draft]) is None
    assert evaluate("pyridostigmine-dose-check", fx.ici_related(fx.grade(2)), [draft]).indicator == "warning"


@pytest.mark.parametrize("unit", ["{tbl}", "{pill}", "tablet"])  # {pill}: the CDS Hooks sandbox's shape
def test_pyridostigmine_tablets_times_strength(unit):
    card = evaluate("pyridostigmine-dose-check", fx.base(), [fx.med(fx.PYRIDO, dose=fx.dosage(3, unit, freq=4))])
    assert card is not None and "= 180 mg" in text(card) and "cannot be interpreted" not in text(card)


def test_steroid_start_warning_at_grade_3_without_cover_info_otherwise():
    draft = fx.med(PREDNISONE, dose=fx.dosage(60, "mg"))
    assert evaluate("steroid-initiation-worsening", fx.base(fx.grade(3)), [draft]).indicator == "warning"
    assert evaluate("steroid-initiation-worsening", fx.base(fx.grade(3), fx.admin(fx.IVIG, 3)), [draft]) is None
    assert evaluate("steroid-initiation-worsening", fx.base(), [draft]).indicator == "info"
    assert evaluate("steroid-initiation-worsening", fx.base(), [fx.med(PREDNISONE, dose=fx.dosage(10, "mg"))]) is None
    ocular = fx.base(fx.obs(fx.cc(fx.LOCAL, "mgfa-class", "MGFA clinical classification"), 3, valueString="I"))
    assert evaluate("steroid-initiation-worsening", ocular, [draft]) is None


def test_a_steroid_renewal_at_an_unchanged_dose_is_not_an_initiation():
    chart = fx.base(fx.med(PREDNISONE, status="active", days_ago=60, dose=fx.dosage(40, "mg")))
    assert evaluate("steroid-initiation-worsening", chart, [fx.med(PREDNISONE, dose=fx.dosage(40, "mg"))]) is None


@pytest.mark.parametrize("as_sent", ["list", "one object"])  # a single Dosage instead of a list: messy, still read
def test_pyridostigmine_given_iv_is_judged_parenteral_however_its_dosage_is_sent(as_sent):
    draft = fx.med(fx.PYRIDO, dose=fx.dosage(10, "mg", route="intravenous"))
    if as_sent == "one object":
        draft["dosageInstruction"] = draft["dosageInstruction"][0]
    card = evaluate("pyridostigmine-dose-check", fx.base(), [draft])
    assert card is not None and card.indicator == "warning"
