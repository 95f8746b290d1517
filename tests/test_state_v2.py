"""PatientState v2 fields (rules.md v2, "Patient state"): one test per field, the
chart in, the field out."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import msgspec
import pytest

from cds_service.decode import decode_body
from cds_service.pool import ResourcePool
from fixtures.build_scenarios import (
    ATC,
    IVIG,
    LOCAL,
    NOW,
    PEMBRO,
    PID,
    RXN,
    SCT,
    admin,
    cc,
    condition,
    day,
    grade,
    iga,
    lab,
    med,
    mg,
    obs,
    qty,
    weight,
)
from hooks.builder import build_state, relevant_drafts
from hooks.fhir_model import MODELS, MedicationRequest
from hooks.fhir_read import medication_period, route_kind, supply_end
from hooks.services import SERVICES

from .conftest import chart_state

METOPROLOL = cc(ATC, "C07AB02", "metoprolol", "Metoprolol succinate 50 mg ER tablet")



def as_struct(resource: dict):
    """A resource as the readers take it: the struct of its model."""
    return msgspec.convert(resource, MODELS[resource["resourceType"]])

state = chart_state


def ago(days: int) -> datetime:
    return datetime.fromisoformat(day(days)).replace(tzinfo=timezone.utc)


def absent(code: str, display: str, days_ago: int = 10) -> dict:
    return lab(code, display, days_ago, dataAbsentReason=cc("http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                                             "not-performed", "Not Performed"))


def ici_admin(days_ago: int) -> dict:
    return admin(PEMBRO, days_ago)


# ------------------------------------------------------------------ lab statuses
def test_data_absent_reason_only_is_not_a_result():
    st = state(mg(), absent("2458-8", "IgA [Mass/volume] in Serum or Plasma"))
    status = st.lab("iga", 365)
    assert status.status == "not-a-result" and not status.usable
    assert "not a result" in status.describe() and "Not Performed" in status.describe()


def test_a_real_result_in_the_window_wins_over_a_newer_absent_one():
    st = state(mg(), absent("2458-8", "IgA", 5), iga(250, 60))
    assert st.lab("iga", 365).status == "result"


def test_absent_newer_than_a_stale_result_is_reported_as_not_a_result():
    st = state(mg(), absent("2458-8", "IgA", 5), iga(250, 800))
    assert st.lab("iga", 365).status == "not-a-result"


def test_missing_becomes_unknown_when_observations_may_be_incomplete():
    assert state(mg()).lab("iga", 365).status == "missing"
    status = state(mg(), incomplete={"Observation"}).lab("iga", 365)
    assert status.status == "unknown" and "may be incomplete" in status.describe()
    # a result that did arrive still counts
    assert state(mg(), iga(), incomplete={"Observation"}).lab("iga", 365).status == "result"


def test_lab_ever_counts_any_date_and_undated_results():
    old = iga(250, 3000)
    st = state(mg(), old)
    assert st.lab("iga", 365).status == "stale"
    ever = st.lab_ever("iga")
    assert ever.status == "result" and ever.window_days == 0
    undated = state(mg(), iga(250, None)).lab_ever("iga")
    assert undated.status == "result" and "undated" in undated.describe()
    assert "at any date" in state(mg()).lab_ever("iga").describe()


def test_undated_result_says_it_is_undated_not_old():
    status = state(mg(), iga(250, None)).lab("iga", 365)
    assert status.status == "stale" and "undated" in status.describe() and "older than" not in status.describe()


def test_positive_at_any_date():
    hbsag = lab("5196-1", "Hepatitis B virus surface Ag", 2000, valueString="Reactive")
    st = state(mg(), hbsag, lab("5196-1", "Hepatitis B virus surface Ag", 10, valueString="Negative"))
    assert st.positive("hbsag") is not None and st.positive("hbsag").date == ago(2000) + timedelta(hours=9)
    assert state(mg(), lab("5196-1", "HBsAg", 10, valueString="Negative")).positive("hbsag") is None


# ------------------------------------------------------------------ MG active and onset, MGFA class
def test_mg_active_and_onset():
    st = state(mg(onsetDateTime=day(700), days_ago=400))
    assert st.mg_active and st.mg_onset == ago(700)
    assert state(mg(days_ago=400)).mg_onset == ago(400)  # recordedDate when there is no onset
    assert not state(mg(status="inactive")).mg_active


def test_mgfa_class_is_the_latest_within_the_window():
    st = state(mg(), obs(cc("urn:mg-cds:observation", "mgfa-class"), 10, valueString="IIb"),
               obs(cc("urn:mg-cds:observation", "mgfa-class"), 3, valueString="IIIa"),
               obs(cc("urn:mg-cds:observation", "mgfa-class"), 90, valueString="V"))
    assert st.mgfa_class == "IIIa"
    assert state(mg(), obs(cc("urn:mg-cds:observation", "mgfa-class"), 90, valueString="V")).mgfa_class is None


# ------------------------------------------------------------------ ICI exposure and attribution
def test_ici_exposure_from_an_active_order_or_a_dose_within_12_months():
    assert state(mg(), med(PEMBRO, status="active", days_ago=500)).ici_exposure
    assert state(mg(), ici_admin(100)).ici_exposure
    old = state(mg(), ici_admin(500))
    assert not old.ici_exposure and old.ici_dose_dates and old.ici_first_date is not None
    assert not state(mg(), drafts=[med(PEMBRO)]).ici_exposure  # a draft is never exposure


def test_ici_dose_dates_and_first_date():
    st = state(mg(), ici_admin(60), ici_admin(120), med(PEMBRO, status="completed", days_ago=200))
    assert st.ici_first_date == ago(200)
    assert len(st.ici_dose_dates) == 3 and st.ici_dose_dates == sorted(st.ici_dose_dates)


def test_ici_related_when_mg_first_recorded_within_12_months_after_a_dose():
    st = state(mg(days_ago=30), ici_admin(60))
    assert st.ici_related and not st.preexisting_mg


def test_preexisting_mg_is_not_ici_related_without_a_flare():
    st = state(mg(days_ago=1000), ici_admin(60))
    assert st.preexisting_mg and not st.ici_related


def test_preexisting_mg_that_flared_after_a_dose_is_ici_related():
    st = state(mg(days_ago=1000), ici_admin(60), grade(3, 5))
    assert st.preexisting_mg and st.ici_related


def test_mg_without_any_ici_is_preexisting_and_not_related():
    st = state(mg())
    assert st.preexisting_mg and not st.ici_related and not st.ici_exposure


# ------------------------------------------------------------------ history of grade 3-4 / grade 2
def test_history_of_grade_3_4_never_lapses_and_survives_a_resolved_mg():
    st = state(mg(days_ago=100, status="resolved"), ici_admin(130), grade(3, 80))
    assert st.grade is None  # not current
    assert st.history_grade34 is not None and st.history_grade34.grade == 3


def test_history_of_a_crisis_condition_long_resolved():
    crisis = condition(cc(SCT, "80976008", "Myasthenic crisis"), days_ago=300, status="resolved")
    st = state(mg(days_ago=320), ici_admin(400), crisis)
    assert st.history_grade34 is not None and st.history_grade34.source == "crisis"


def test_history_needs_ici_attribution():
    st = state(mg(days_ago=2000), grade(3, 80))  # no ICI at all
    assert st.history_grade34 is None
    before = state(mg(days_ago=2000), grade(3, 80), ici_admin(10))  # the grade came before the ICI
    assert before.history_grade34 is None


def test_history_of_grade_2():
    st = state(mg(days_ago=100), ici_admin(130), grade(2, 80))
    assert st.history_grade2 is not None and st.history_grade34 is None


def test_history_uses_doses_at_any_date():
    # rechallenge 13 months after the last dose: the grade 3 MG back then still counts
    st = state(mg(days_ago=420), ici_admin(450), grade(3, 410))
    assert not st.ici_exposure and st.history_grade34 is not None


# ------------------------------------------------------------------ medications: route, period, chronic
@pytest.mark.parametrize("concept,dosage,expected", [
    (cc(text="Timolol 0.5% ophthalmic solution"), None, "ophthalmic"),
    (cc(text="Ciprofloxacin 0.3% otic solution"), None, "otic"),
    (cc(text="Gentamicin 0.1% cream"), None, "topical"),
    (cc(text="Gentamicin 80 mg"), {"route": {"text": "Intravenous"}}, "systemic"),
    (cc(text="Gentamicin ophthalmic"), {"route": cc(SCT, "54485002", "Ophthalmic route")}, "ophthalmic"),
    (cc(text="Gentamicin 80 mg"), {"route": {"text": "Irrigation"}}, "systemic"),
    (cc(text="Heparin 5000 units"), {"route": {"text": "Subcutaneous"}}, "systemic"),
])
def test_route(concept, dosage, expected):
    resource = med(concept, dosageInstruction=[dosage] if dosage else None)
    assert route_kind(as_struct(resource), concept) == expected


def test_period_start_and_end():
    proc = {"resourceType": "MedicationAdministration", "effectivePeriod": {"start": day(16), "end": day(12)}}
    assert medication_period(as_struct(proc)) == (ago(16), ago(12))
    single = {"resourceType": "MedicationAdministration", "effectiveDateTime": day(5)}
    assert medication_period(as_struct(single)) == (ago(5), ago(5))
    bounds = med(IVIG, dosageInstruction=[{"timing": {"repeat": {"boundsPeriod": {"start": day(3), "end": day(1)}}}}])
    assert medication_period(as_struct(bounds)) == (ago(3), ago(1))
    assert medication_period(as_struct(med(IVIG, days_ago=7))) == (ago(7), ago(7))


def test_med_entry_start_end_from_an_administration_over_a_period():
    given = admin(IVIG, 0)
    del given["effectiveDateTime"]
    given["effectivePeriod"] = {"start": day(16), "end": day(12)}
    st = state(mg(), given)
    entry = next(m for m in st.meds if m.has("drug-ivig"))
    assert (entry.start, entry.end) == (ago(16), ago(12))
    assert st.ivig_courses[0].start == ago(16) and st.ivig_courses[0].end == ago(12)
    assert min(st.ivig_dates) == ago(16) and max(st.ivig_dates) == ago(12)


def test_chronic_and_new():
    chronic = state(mg(), med(METOPROLOL, status="active", days_ago=200))
    assert chronic.meds[0].chronic and not chronic.meds[0].new
    fresh = state(mg(), med(METOPROLOL, status="active", days_ago=10))
    assert fresh.meds[0].new
    renewal = state(mg(), med(METOPROLOL, status="active", days_ago=200), drafts=[med(METOPROLOL)])
    assert renewal.drafts[0].chronic
    first = state(mg(), drafts=[med(METOPROLOL)])
    assert first.drafts[0].new


def test_chronic_across_successive_completed_orders():
    orders = [med(METOPROLOL, status="completed", days_ago=d) for d in (90, 60, 30)]
    assert state(mg(), *orders, drafts=[med(METOPROLOL)]).drafts[0].chronic
    long_ago = state(mg(), med(METOPROLOL, status="completed", days_ago=400), drafts=[med(METOPROLOL)])
    assert long_ago.drafts[0].new  # a course a year ago is not successive


def test_undated_active_order_is_taken_as_chronic():
    order = med(METOPROLOL, status="active")
    del order["authoredOn"]
    assert state(mg(), order).meds[0].chronic


def test_iga_depleted_product_and_its_label_content():
    standard = state(mg(), drafts=[med(IVIG)]).drafts[0]
    assert standard.iga_depleted is False and standard.iga_content is None
    by_code = state(mg(), drafts=[med(cc("http://www.nlm.nih.gov/research/umls/rxnorm", "1809738",
                                         "immunoglobulin G, human 10000 MG Injection [Gammagard]"))]).drafts[0]
    assert by_code.has("drug-ivig") and by_code.iga_depleted and "IgA less than 1" in by_code.iga_content
    by_name = state(mg(), drafts=[med(cc(text="Gammagard S/D 5 g IV"))]).drafts[0]
    assert by_name.iga_depleted and by_name.iga_content == by_code.iga_content


# ------------------------------------------------------------------ allergies and courses
def test_allergy_to_immune_globulin():
    allergy = {"resourceType": "AllergyIntolerance", "id": "al-1", "patient": {"reference": f"Patient/{PID}"},
               "clinicalStatus": cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active"),
               "criticality": "high", "code": cc(text="Immune globulin (human)"), "recordedDate": day(400),
               "reaction": [{"manifestation": [cc(SCT, "39579001", "Anaphylaxis")]}]}
    st = state(mg(), allergy)
    assert len(st.allergies) == 1
    a = st.allergies[0]
    assert "drug-ivig" in a.classes and a.criticality == "high" and a.severe and a.date == ago(400)
    resolved = dict(allergy, clinicalStatus=cc("http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                               "resolved"))
    assert state(mg(), resolved).allergies == []
    other = dict(allergy, code=cc(text="Peanut"))
    assert state(mg(), other).allergies == []


def test_ivig_doses_on_consecutive_days_are_one_course():
    st = state(mg(), *(admin(IVIG, d) for d in (40, 39, 38, 10, 9)))
    assert [(c.start.date(), c.end.date()) for c in st.ivig_courses] == [
        (ago(40).date(), ago(38).date()), (ago(10).date(), ago(9).date())]


def test_plasma_exchange_courses_over_a_period():
    proc = {"resourceType": "Procedure", "id": "px-1", "status": "completed",
            "code": cc(SCT, "182833002", "Plasmapheresis"), "subject": {"reference": f"Patient/{PID}"},
            "performedPeriod": {"start": day(20), "end": day(12)}}
    st = state(mg(), proc)
    assert st.plasma_exchange_courses and st.plasma_exchange_courses[0].start == ago(20)
    assert st.plasma_exchange_dates[0] == ago(20) and st.plasma_exchange_dates[-1] == ago(12)


def test_explain_reports_the_v2_fields():
    out = state(mg(), weight(), ici_admin(30)).explain()
    assert out["ici"]["exposure"] is True and out["mg_active"] is True and out["allergies"] == []


# ------------------------------------------------------------------ grade v2 (acute severity)
def mgfa(value: str, days_ago: int = 3) -> dict:
    return obs(cc("urn:mg-cds:observation", "mgfa-class"), days_ago, valueString=value)


def fvc(ml: float, days_ago: int) -> dict:
    return lab("19868-9", "FVC", days_ago, **{"valueQuantity": {"value": ml, "unit": "mL", "code": "mL",
                                                                  "system": "http://unitsofmeasure.org"}})


@pytest.mark.parametrize("value,expected", [("I", 2), ("IIb", 2), ("IIIa", 3), ("IVa", 3), ("V", 4)])
def test_mgfa_maps_to_asco_grades_in_ici_related_mg(value, expected):
    st = state(mg(days_ago=20), ici_admin(50), mgfa(value))
    assert st.ici_related and st.grade == expected


def test_mgfa_iva_grades_3_outside_ici_related_mg_only_with_bulbar_evidence():
    assert state(mg(), mgfa("IVa")).grade is None
    st = state(mg(), mgfa("IVa"), condition(cc(text="Dysphagia"), days_ago=2))
    assert st.grade == 3 and {e.source for e in st.grade_evidence} == {"mgfa", "dysphagia"}


def test_latest_fvc_overrides_an_older_low_one():
    low_then_normal = state(mg(), weight(75), fvc(1000, 20), fvc(3000, 1))  # 13.3 then 40 mL/kg
    assert low_then_normal.grade is None
    normal_then_low = state(mg(), weight(75), fvc(3000, 20), fvc(1000, 1))
    assert normal_then_low.grade == 3


def test_dysphagia_coded_to_another_cause_does_not_grade():
    stroke = condition(cc(text="Dysphagia following cerebral infarction"), days_ago=2)
    st = state(mg(), stroke)
    assert st.grade is None and any("another cause" in n for n in st.grade_notes)
    due_to = condition(cc(text="Dysphagia"), days_ago=2, extension=[{
        "url": "http://hl7.org/fhir/StructureDefinition/condition-dueTo",
        "valueCodeableConcept": cc(text="Oesophageal carcinoma")}])
    assert state(mg(), due_to).grade is None
    assert state(mg(), condition(cc(text="Dysphagia due to myasthenia gravis"), days_ago=2)).grade == 3


def test_fvc_nif_dysphagia_never_make_mg_present():
    st = state(weight(75), fvc(800, 1), lab("20150-9", "NIF", 1, **{"valueQuantity": {"value": -10, "unit": "cm[H2O]"}}),
               condition(cc(text="Dysphagia"), days_ago=1))
    assert not st.mg_present and st.grade is None and st.history_grade34 is None


def test_history_of_mgfa_iii_in_ici_related_mg():
    st = state(mg(days_ago=100), ici_admin(130), mgfa("IIIb", 90))
    assert st.history_grade34 is not None and st.history_grade34.source == "mgfa"


def test_explicit_grade_1_note_only_when_it_grades():
    assert not state(mg(), grade(1, 80)).grade_notes
    st = state(mg(), grade(1, 2))
    assert st.grade == 2 and st.grade_notes


# ------------------------------------------------------------------ value sets read (review #1)
def test_kidney_and_anti_iga_results_are_read_and_a_creatinine_is_also_serum_chemistry():
    st = state(mg(), lab("62238-1", "eGFR CKD-EPI", 3, **qty(25, "mL/min/{1.73_m2}")),
               lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", 3, **qty(2.9, "mg/dL")),
               lab("44583-3", "IgA Ab [Presence] in Serum", 100, valueString="Positive"))
    assert st.lab("egfr", 30).latest.value == 25 and st.lab("creatinine", 30).latest.value == 2.9
    assert st.lab("chemistry", 30).status == "result"
    assert st.positive("anti-iga") is not None and st.lab("iga", 365).status == "missing"


@pytest.mark.parametrize("concept, vid", [
    (cc(ATC, "J01FA15", "telithromycin"), "drug-telithromycin"),
    (cc(text="rocuronium 10 mg/mL injection"), "drug-neuromuscular-blocker"),
    (cc(RXN, "5521", "hydroxychloroquine"), "drug-hydroxychloroquine"),
    (cc(text="Quinine sulfate 324 mg capsule"), "drug-quinine"),
    (cc(text="colistimethate 150 mg IV"), "drug-polymyxin"),
    (cc(text="Procainamide 500 mg IV"), "drug-procainamide"),
    (cc(text="OnabotulinumtoxinA 100 units injection"), "drug-botulinum-toxin"),
    (cc(text="penicillamine 250 mg capsule"), "drug-penicillamine"),
])
def test_new_mg_worsening_drug_classes_are_read_and_their_drafts_relevant(concept, vid):
    draft = med(concept)
    assert vid in state(mg(), drafts=[draft]).drafts[0].classes
    assert relevant_drafts([draft], PID, NOW)


# ------------------------------------------------------------------ far-future dates (review #20)
def test_date_arithmetic_on_orders_dated_9999_never_overflows():
    metoprolol = [med(METOPROLOL, status="completed", authoredOn=d) for d in ("9999-12-30", "9999-12-31")]
    ivig = [med(IVIG, status="completed", authoredOn=d) for d in ("9999-12-30", "9999-12-31")]
    far = ici_admin(5)
    far["effectiveDateTime"] = "9999-12-31T10:00:00Z"
    st = state(mg(), *metoprolol, *ivig, far, grade(3, 2), drafts=[med(METOPROLOL)])
    assert st.drafts[0].chronic is False and len(st.ivig_courses) == 1
    assert st.ici_dose_dates[-1].year == 9999 and st.grade == 3


# ------------------------------------------------------------------ dysphagia observations (review #2)
DYSPHAGIA_SCREEN = cc(text="Dysphagia screen")
NOT_PERFORMED = {"dataAbsentReason": cc("http://terminology.hl7.org/CodeSystem/data-absent-reason", "not-performed")}


@pytest.mark.parametrize("value", [NOT_PERFORMED, {}, {"valueCodeableConcept": cc("http://loinc.org", "LA32-8")},
                                   {"valueString": "None"}, {"valueString": "not present"}, {"valueString": "No"},
                                   {"valueString": "denies"}, {"valueBoolean": False}])
def test_a_dysphagia_observation_that_does_not_say_present_never_grades_nor_makes_history(value):
    st = state(mg(recordedDate=day(90)), ici_admin(120), obs(DYSPHAGIA_SCREEN, 2, **value))
    assert st.grade is None and st.history_grade34 is None


@pytest.mark.parametrize("value", [{"valueCodeableConcept": cc("http://loinc.org", "LA33-6")}, {"valueBoolean": True},
                                   {"valueString": "Yes"}, {"valueString": "present"}])
def test_a_dysphagia_observation_that_says_present_grades_3(value):
    assert state(mg(), obs(DYSPHAGIA_SCREEN, 2, **value)).grade == 3


def test_a_dysphagia_observation_without_a_readable_answer_is_noted():
    st = state(mg(), obs(DYSPHAGIA_SCREEN, 2, **NOT_PERFORMED))
    assert any("Dysphagia screen" in n and "not grade evidence" in n for n in st.grade_notes)


# ------------------------------------------------------------------ stopped is history (review #3)
def test_a_stopped_checkpoint_inhibitor_order_is_exposure_and_keeps_grade_3_history():
    st = state(mg(recordedDate=day(170)), med(PEMBRO, status="stopped", days_ago=200), grade(3, 165))
    assert st.ici_dose_dates == [ago(200)] and st.ici_related and st.history_grade34 is not None


def test_a_halted_checkpoint_inhibitor_infusion_is_a_dose():
    infusion = ici_admin(100)
    infusion["status"] = "stopped"
    assert state(mg(), infusion).ici_dose_dates == [datetime.fromisoformat(day(100) + "T10:00:00+00:00")]


def test_a_renewal_after_a_stopped_long_order_is_chronic():
    bounds = {"timing": {"repeat": {"boundsPeriod": {"start": day(400), "end": day(1)}}}}
    previous = med(METOPROLOL, status="stopped", days_ago=400, dosageInstruction=[bounds])
    assert state(mg(), previous, drafts=[med(METOPROLOL)]).drafts[0].chronic


def test_a_stopped_ventilation_is_grade_4_and_a_not_done_one_is_nothing():
    def ventilation(status):
        return {"resourceType": "Procedure", "id": f"vent-{status}", "status": status,
                "code": cc(text="Mechanical ventilation"), "subject": {"reference": f"Patient/{PID}"},
                "performedDateTime": day(3),
                "reasonCode": [cc(SCT, "91637004", "Myasthenia gravis")]}
    assert state(mg(), ventilation("stopped")).grade == 4
    assert state(mg(), ventilation("not-done")).grade is None


# ------------------------------------------------------------------ ventilation for MG only (review #4)
def _intubation(days_ago: int, **reason) -> dict:
    return {"resourceType": "Procedure", "id": f"vent-{days_ago}", "status": "completed",
            "code": cc(text="Endotracheal intubation"), "subject": {"reference": f"Patient/{PID}"},
            "performedDateTime": day(days_ago), **reason}


def test_an_intubation_for_surgery_is_no_grade_and_no_history_but_a_note():
    surgery = {"reasonCode": [cc(text="General anaesthesia for hip replacement")]}
    st = state(mg(recordedDate=day(100)), ici_admin(150), _intubation(60, **surgery), _intubation(3, **surgery))
    assert st.grade is None and st.history_grade34 is None
    assert any("names no MG reason" in n for n in st.grade_notes)


def test_an_intubation_for_mg_by_reason_reference_or_during_an_active_crisis_is_grade_4():
    crisis = condition(cc(text="Myasthenic crisis"), days_ago=3)
    by_reference = _intubation(3, reasonReference=[{"reference": f"Condition/{crisis['id']}"}])
    assert any(e.source == "ventilation" for e in state(mg(), crisis, by_reference).grade_evidence)
    assert state(mg(), _intubation(3, reasonReference=[{"display": "myasthenia gravis exacerbation"}])).grade == 4
    assert any(e.source == "ventilation" for e in state(mg(), crisis, _intubation(3)).grade_evidence)


# ------------------------------------------------------------------ pre-existing MG: ASCO from the flare (review #5)
def _mgfa(shown: str, days_ago: int) -> dict:
    return obs(cc(LOCAL, "mgfa-class"), days_ago, valueString=shown)


def test_in_preexisting_mg_a_class_before_the_first_attributed_flare_is_no_ici_history():
    st = state(mg(recordedDate=day(1100)), ici_admin(200), _mgfa("IIIa", 190), grade(2, 40))
    assert st.preexisting_mg and st.ici_related and st.history_grade34 is None


def test_in_preexisting_mg_a_class_after_the_flare_maps_by_asco():
    st = state(mg(recordedDate=day(1100)), ici_admin(200), grade(2, 40), _mgfa("IIIa", 20))
    assert st.history_grade34 is not None and st.history_grade34.source == "mgfa"


# ------------------------------------------------------------------ coded and negated answers (review #6)
def _hbsag(**value) -> dict:
    return lab("5196-1", "Hepatitis B virus surface Ag [Presence] in Serum or Plasma by Immunoassay", 400, **value)


@pytest.mark.parametrize("system, code", [(SCT, "10828004"), (SCT, "260373001"), (SCT, "11214006"),
                                          ("http://loinc.org", "LA6576-8"), ("http://loinc.org", "LA11882-0")])
def test_a_coded_positive_answer_without_display_is_positive(system, code):
    assert state(mg(), _hbsag(valueCodeableConcept=cc(system, code))).positive("hbsag") is not None


@pytest.mark.parametrize("value", [{"valueCodeableConcept": cc(SCT, "260385009")},
                                   {"valueCodeableConcept": cc(SCT, "260415000")},
                                   {"valueCodeableConcept": cc(SCT, "131194007")},
                                   {"valueCodeableConcept": cc("http://loinc.org", "LA6577-6")},
                                   {"valueCodeableConcept": cc("http://loinc.org", "LA11883-8")},
                                   {"valueString": "Not reactive"}, {"valueString": "No HBsAg detected"},
                                   {"valueString": "Non reactive"}])
def test_a_negative_or_negated_answer_is_a_negative_result(value):
    st = state(mg(), _hbsag(**value))
    assert st.positive("hbsag") is None and st.lab_ever("hbsag").latest.interpretation == "negative"


# ------------------------------------------------------------------ hepatitis B at any status (review #7)
@pytest.mark.parametrize("status", ["resolved", "inactive", "remission"])
def test_a_resolved_hepatitis_b_or_iga_deficiency_stays_on_the_problem_list_with_its_status(status):
    hbv = condition(cc("http://hl7.org/fhir/sid/icd-10-cm", "B18.1", "Chronic viral hepatitis B without delta-agent"),
                    status=status)
    st = state(mg(), hbv, condition(cc(text="Selective IgA deficiency"), status=status))
    assert st.conditions["condition-hepatitis-b"] == [f"Chronic viral hepatitis B without delta-agent ({status})"]
    assert st.conditions["condition-iga-deficiency"] == [f"Selective IgA deficiency (matched by name) ({status})"]


def test_a_refuted_hepatitis_b_or_an_inactive_unrelated_condition_is_not_kept():
    refuted = condition(cc(text="Hepatitis B"), verificationStatus=cc(
        "http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted"))
    st = state(mg(), refuted, condition(cc(text="Hypertension"), status="resolved"))
    assert "condition-hepatitis-b" not in st.conditions and len(st.conditions) == 1


# ------------------------------------------------------------------ old result, incomplete data (review #17)
def test_an_old_result_when_observations_may_be_incomplete_is_unknown_not_stale():
    status = state(mg(), iga(250, days_ago=800), incomplete={"Observation"}).lab("iga", 365)
    assert status.status == "unknown" and status.latest is not None
    assert day(800) in status.describe() and "may be incomplete" in status.describe()
    assert state(mg(), iga(250, days_ago=800)).lab("iga", 365).status == "stale"


# ------------------------------------------------------------------ first ICI date (review #15)
def test_the_first_ici_date_is_the_first_administration_when_one_is_recorded():
    st = state(mg(recordedDate=day(30)), med(PEMBRO, status="active", days_ago=40), ici_admin(20))
    assert st.ici_first_date.date() == ago(20).date() and st.preexisting_mg
    assert state(mg(), med(PEMBRO, status="active", days_ago=40)).ici_first_date == ago(40)


# ------------------------------------------------------------------ undated MG and ICI doses (review #14)
def test_an_undated_mg_with_past_ici_doses_counts_as_preexisting_with_a_note():
    undated = mg()
    del undated["recordedDate"]
    st = state(undated, ici_admin(60), drafts=[med(PEMBRO)])
    assert st.preexisting_mg and any("MG date unknown" in n for n in st.data_quality)
    assert not state(mg(), drafts=[med(PEMBRO)]).data_quality


# ------------------------------------------------------------------ withdrawn drafts (review #25)
@pytest.mark.parametrize("status", ["entered-in-error", "cancelled", "revoked"])
def test_a_withdrawn_draft_is_not_evaluated_nor_relevant(status):
    draft = med(PEMBRO, status=status)
    st = state(mg(), drafts=[draft])
    assert st.drafts == [] and any(status in n for n in st.data_quality)
    assert not relevant_drafts([draft], PID, NOW)


# ------------------------------------------------------------------ IVIG courses given (review #16)
def test_an_active_ivig_order_not_yet_given_is_no_course():
    order = med(IVIG, status="active", days_ago=2)
    assert state(mg(), order).ivig_courses == [] and state(mg(), order).ivig_dates == []


def test_an_in_progress_ivig_infusion_with_only_a_start_reaches_now():
    running = {"resourceType": "MedicationAdministration", "id": "ma-run", "status": "in-progress",
               "medicationCodeableConcept": IVIG, "subject": {"reference": f"Patient/{PID}"},
               "effectivePeriod": {"start": day(20)}}
    (course,) = state(mg(), running).ivig_courses
    assert course.start == ago(20) and course.end == NOW


def test_a_completed_ivig_order_spans_its_bounds_duration_typed_or_plain():
    order = med(IVIG, status="completed", days_ago=17, dosageInstruction=[
        {"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d",
                               "boundsDuration": {"value": 5, "unit": "days", "system": "http://unitsofmeasure.org",
                                                  "code": "d"}}}}])
    (course,) = state(mg(), order).ivig_courses
    assert (course.start, course.end) == (ago(17), ago(13))
    typed = msgspec.convert(order, MedicationRequest)
    assert medication_period(typed) == (ago(17), ago(13))


# ------------------------------------------------------------------ chronic across supplies (review #9, in part)
def _supplied(days_ago: int, supply_days: int, repeats: int | None = None) -> dict:
    dispense = {"expectedSupplyDuration": {"value": supply_days, "unit": "days", "system": "http://unitsofmeasure.org",
                                           "code": "d"}}
    if repeats is not None:
        dispense["numberOfRepeatsAllowed"] = repeats
    return med(METOPROLOL, status="completed", days_ago=days_ago, dispenseRequest=dispense)


def test_quarterly_90_day_supplies_make_a_renewal_chronic_typed_or_plain():
    orders = [_supplied(d, 90) for d in (270, 180, 90)]
    assert state(mg(), *orders, drafts=[med(METOPROLOL)]).drafts[0].chronic
    assert supply_end(orders[0], ago(270)) == ago(180)
    # decoded typed, as the service reads a chart: the supply is read from the order as sent
    raw = json.dumps({"prefetch": {"medications": {"resourceType": "Bundle", "type": "searchset",
                                                   "entry": [{"resource": o} for o in orders]}}}).encode()
    pool = ResourcePool()
    pool.add_all(decode_body(raw, SERVICES[0].decoder)["prefetch"].items())
    typed = build_state(pool, PID, NOW, drafts=[med(METOPROLOL)])
    assert not isinstance(next(iter(pool.of_type("MedicationRequest"))), dict) and typed.drafts[0].chronic
    assert state(mg(), _supplied(60, 90, repeats=3), drafts=[med(METOPROLOL)]).drafts[0].chronic
    assert not state(mg(), _supplied(60, 20), drafts=[med(METOPROLOL)]).drafts[0].chronic


# ------------------------------------------------------------------ route from route and product only (review #8)
GENTAMICIN = cc(RXN, "4413", "gentamicin", "gentamicin 40 MG/ML Injectable Solution")


@pytest.mark.parametrize("concept, dosage, route", [
    (METOPROLOL, {"text": "Take by mouth twice daily; report swelling of the eyes or face."}, "systemic"),
    (GENTAMICIN, {"text": "80 mg IV q8h; monitor for ear ringing (ototoxicity)"}, "systemic"),
    (GENTAMICIN, {"text": "apply cream to skin?", "route": {"coding": [{"system": SCT, "code": "47625008"}]}},
     "systemic"),
    (cc(text="Timolol 0.5% ophthalmic solution"), {"text": "1 drop"}, "ophthalmic"),
    (cc(text="Timolol 0.5% ophthalmic solution"), {"route": {"text": "Oral"}}, "systemic"),
    (cc(text="Timolol 0.5% ophthalmic solution"), {"route": {"text": "Otic"}}, "systemic"),
    (cc(text="Timolol 0.5% solution"), {"route": {"text": "Ophthalmic"}}, "ophthalmic"),
])
def test_the_route_is_read_from_the_route_and_the_product_never_from_instruction_prose(concept, dosage, route):
    assert route_kind(as_struct(med(concept, dosageInstruction=[dosage])), concept) == route


# ------------------------------------------------------------------ MGFA IVa and superseded evidence (review #10)
def _fvc(ml: float, days_ago: int) -> dict:
    return obs(cc("http://loinc.org", "19870-5", "Forced vital capacity"), days_ago, **qty(ml, "mL"))


def test_mgfa_iva_grades_only_with_current_bulbar_or_respiratory_evidence_not_a_superseded_one():
    superseded = state(mg(), weight(72), _fvc(1080, 21), _fvc(2880, 1), _mgfa("IVa", 1))
    assert superseded.grade is None
    assert state(mg(), weight(72), _fvc(1080, 1), _mgfa("IVa", 1)).grade == 3


# ------------------------------------------------------------------ respiratory evidence read (review #11)
def test_grade_text_shows_evidence_that_could_not_be_read():
    text = state(mg(), _fvc(900, 1)).grade_text()
    assert "grade unknown" in text and "no weight" in text


def test_an_fvc_recorded_per_kg_and_a_nif_in_kpa_are_read():
    per_kg = obs(cc("http://loinc.org", "19870-5", "Forced vital capacity"), 1, **qty(12, "mL/kg"))
    st = state(mg(), per_kg)
    assert st.grade == 3 and not st.data_quality
    nif = obs(cc(text="Negative inspiratory force"), 1, **qty(-2.0, "kPa"))  # -20.4 cm H2O
    assert state(mg(), nif).grade == 3
    assert state(mg(), obs(cc(text="Negative inspiratory force"), 1, **qty(-4.0, "kPa"))).grade is None


# ------------------------------------------------------------------ dysphagia's cause (review #12)
@pytest.mark.parametrize("name", ["Dysphagia following nivolumab", "Dysphagia after pembrolizumab infusion",
                                  "Dysphagia, worse after meals"])
def test_a_dysphagia_after_an_ici_or_after_meals_is_mg_evidence(name):
    assert state(mg(recordedDate=day(60)), ici_admin(90), condition(cc(text=name), days_ago=5)).grade == 3


def test_a_dysphagia_due_to_another_cause_or_to_an_unresolvable_one():
    due_to = "http://hl7.org/fhir/StructureDefinition/condition-dueTo"
    assert state(mg(), condition(cc(text="Dysphagia due to oesophageal cancer"), days_ago=5)).grade is None
    lost = condition(cc(text="Dysphagia"), days_ago=5, extension=[{"url": due_to,
                                                                 "valueReference": {"reference": "Condition/gone"}}])
    assert state(mg(), lost).grade == 3


# ------------------------------------------------------------------ an invalid MG Condition (review #18)
def test_an_mg_condition_with_an_invalid_date_still_makes_mg_present_for_the_safety_rules():
    st = state(mg(recordedDate="2020-13-01"), drafts=[med(PEMBRO)])
    assert st.mg_present and st.mg_active and st.mg_onset is None
    assert any("not valid FHIR R4" in n for n in st.data_quality) and "presence only" in st.mg_evidence[0]
    assert not state(condition(cc(text="Hypertension"), recordedDate="2020-13-01")).mg_present


# ------------------------------------------------------------------ pending orders (review #21)
def _hbsag_order(status: str, days_ago: int) -> dict:
    return {"resourceType": "ServiceRequest", "id": f"sr-{status}-{days_ago}", "status": status, "intent": "order",
            "code": cc("http://loinc.org", "5196-1", "HBsAg"), "subject": {"reference": f"Patient/{PID}"},
            "authoredOn": day(days_ago)}


def test_a_draft_or_an_order_older_than_the_window_is_not_pending():
    assert state(mg(), _hbsag_order("draft", 10)).lab("hbsag", 365).status == "missing"
    assert state(mg(), _hbsag_order("active", 1500)).lab("hbsag", 365).status == "missing"
    assert state(mg(), _hbsag_order("active", 10)).lab("hbsag", 365).status == "pending"
    assert state(mg(), _hbsag_order("active", 1500)).lab_ever("hbsag").status == "pending"


# ------------------------------------------------------------------ MG Observations without a value (review #23)
def test_an_mg_grade_or_class_observation_without_a_value_does_not_make_mg_present():
    not_applicable = cc("http://terminology.hl7.org/CodeSystem/data-absent-reason", "not-applicable")
    assert not state(obs(cc(LOCAL, "mgfa-class"), 2, dataAbsentReason=not_applicable)).mg_present
    assert not state(obs(cc(LOCAL, "mg-grade"), 2, status="preliminary")).mg_present
    assert state(obs(cc(LOCAL, "mgfa-class"), 2, valueString="IIa")).mg_present


# ------------------------------------------------------------------ explain: one-time tests at any date (review #22)
def test_explain_shows_one_time_tests_at_any_date_and_the_rest_for_12_months():
    chart = state(mg(), iga(250, days_ago=800), lab("2157-6", "CK", 800, **qty(100, "U/L")))
    labs = chart.explain()["labs_last_12_months"]
    assert labs["iga"].startswith("IgA: 250") and "older than 12 months" in labs["ck"]


# ------------------------------------------------------------------ an old FVC per kg (review #26)
def test_an_old_fvc_is_read_per_kg_with_the_weight_of_then():
    chart = (mg(recordedDate=day(230)), ici_admin(260), _fvc(900, 200))
    st = state(*chart, weight(72, days_ago=205))
    assert st.history_grade34 is not None and "12.5 mL/kg" in st.history_grade34.description
    assert state(*chart, weight(72, days_ago=205), weight(30, days_ago=2)).history_grade34.description.endswith(
        "12.5 mL/kg (< 20 mL/kg)")
