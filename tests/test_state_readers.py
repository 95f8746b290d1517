"""The readers on real EHR data (issue 16): a failed lookup never drops a draft,
numbers no float holds, results without a value, courses over a Period, undated
results, doses in tablets."""
from __future__ import annotations

import msgspec
import pytest

from cds_service.pool import ResourcePool
from fixtures.build_scenarios import IVIG, NOW, PID, RITUXIMAB, admin, cc, day, grade, iga, lab, med, mg, weight
from hooks import units
from hooks.builder import relevant_drafts
from hooks.fhir_model import Medication, MedicationRequest, Observation, Quantity
from hooks.fhir_read import strength_mg
from hooks.values import read_value, reference_range

from .conftest import chart_state

RITUXIMAB_REF = {"resourceType": "MedicationRequest", "id": "rx-ritux", "status": "draft", "intent": "order",
                 "subject": {"reference": f"Patient/{PID}"}, "authoredOn": day(0),
                 "medicationReference": {"reference": "Medication/med-ritux", "display": "rituximab 10 MG/ML Injection"}}


state = chart_state


# ------------------------------------------------------------------ item 0: a failed lookup never drops a draft
class BrokenLookup(ResourcePool):
    """A pool whose reference lookup fails, as one holding an id-less OperationOutcome once did."""

    def resolve(self, reference: str):
        raise AttributeError("'OperationOutcome' object has no attribute 'id'")


def test_a_failed_medication_lookup_keeps_the_draft_from_its_display_with_a_note():
    st = state(mg(), drafts=[RITUXIMAB_REF], pool=BrokenLookup())
    assert [d.classes for d in st.drafts] == [("drug-rituximab",)]
    assert any("could not be looked up (AttributeError); read its display" in n for n in st.data_quality)


def test_a_drafted_medication_sent_as_its_own_draft_entry_is_read():
    medication = {"resourceType": "Medication", "id": "med-ritux", "code": RITUXIMAB}
    order = dict(RITUXIMAB_REF, medicationReference={"reference": "Medication/med-ritux"})  # no display
    assert relevant_drafts([order, medication], PID, NOW)
    st = state(mg(), drafts=[order, medication])
    assert [d.classes for d in st.drafts] == [("drug-rituximab",)] and st.drafts[0].matched_by == "code"


def test_epic_empty_search_outcome_entry_does_not_drop_the_draft():
    outcome = {"resourceType": "Bundle", "type": "searchset", "entry": [{
        "resource": {"resourceType": "OperationOutcome", "issue": [{
            "severity": "information", "code": "informational",
            "details": {"text": "Resource request returns no results."}}]},
        "search": {"mode": "outcome"}}]}
    st = state(mg(), outcome, drafts=[RITUXIMAB_REF])
    assert [d.classes for d in st.drafts] == [("drug-rituximab",)]


# ------------------------------------------------------------------ item 0b: numbers no float holds
HUGE_INT = 10 ** 400


@pytest.mark.parametrize("value", [HUGE_INT, -HUGE_INT, float("inf"), "1" + "0" * 400])
def test_a_number_too_large_is_a_problem_never_an_exception(value):
    reading = read_value(Observation(valueQuantity=Quantity(value=value, unit="kg", code="kg")), "kg")
    assert reading.value is None and reading.problem == "the number is too large to be a measurement"


def test_huge_integer_value_and_reference_range_bounds():
    assert read_value(Observation(valueInteger=HUGE_INT), None).problem
    assert reference_range(Observation(referenceRange=[{"high": {"value": HUGE_INT, "unit": "mg/dL"}}]), "mg/dL") == (None, None)
    assert reference_range(Observation(referenceRange=[{"high": {"value": 1e308, "unit": "g/dL"}}]), "mg/dL") == (None, None)


def test_a_conversion_that_overflows_is_a_problem():
    reading = read_value(Observation(valueQuantity=Quantity(value=1e307, unit="g/dL", code="g/dL")), "mg/dL")
    assert reading.value is None and reading.problem


def test_huge_weight_is_a_body_size_problem_and_the_state_still_builds():
    st = state(mg(), weight(HUGE_INT))
    assert st.body.weight_kg is None
    assert any("too large" in p for p in st.body.problems)
    st.explain()


def test_huge_explicit_grade_is_a_note():
    huge = grade(2)
    huge["valueInteger"] = HUGE_INT
    st = state(mg(), huge)
    assert st.grade is None and any(huge["id"] in n for n in st.data_quality)  # not valid FHIR R4: skipped


# ------------------------------------------------------------------ item 1: dataAbsentReason only
def test_hbsag_with_only_a_data_absent_reason_is_not_screening_done():
    absent = lab("5196-1", "Hepatitis B virus surface Ag", 10,
                 dataAbsentReason=cc("http://terminology.hl7.org/CodeSystem/data-absent-reason", "error", "Error"))
    status = state(mg(), absent).lab("hbsag", 365)
    assert status.status == "not-a-result" and not status.usable and "Error" in status.describe()


# ------------------------------------------------------------------ item 2: courses over a Period
def test_ivig_over_a_period_counts_from_its_start():
    given = admin(IVIG, 12)
    del given["effectiveDateTime"]
    given["effectivePeriod"] = {"start": day(16) + "T10:00:00Z", "end": day(12) + "T10:00:00Z"}
    st = state(mg(), given)
    assert st.ivig_courses[0].start.date().isoformat() == day(16)
    assert st.ivig_courses[0].end.date().isoformat() == day(12)
    assert st.ivig_dates[0].date().isoformat() == day(16)


# ------------------------------------------------------------------ item 6: tablets x strength
@pytest.mark.parametrize("concept,medication,expected", [
    (cc(text="Pyridostigmine Bromide 60 MG Oral Tablet"), None, 60.0),
    (cc(text="Pyridostigmine Bromide 180 MG Extended Release Oral Tablet"), None, 180.0),
    (cc(text="Pyridostigmine bromide 12 MG/ML Oral Solution"), None, None),  # a concentration, not a tablet
    (cc(text="Amoxicillin 500 MG / Clavulanate 125 MG Oral Tablet"), None, None),  # a combination
    (None, {"resourceType": "Medication", "code": cc(text="Mestinon"), "ingredient": [{"strength": {
        "numerator": {"value": 60, "unit": "mg", "code": "mg"}, "denominator": {"value": 1, "code": "{tbl}"}}}]}, 60.0),
    (None, {"resourceType": "Medication", "code": cc(text="Mestinon syrup"), "ingredient": [{"strength": {
        "numerator": {"value": 60, "code": "mg"}, "denominator": {"value": 5, "code": "mL"}}}]}, None),
])
def test_strength_of_one_tablet(concept, medication, expected):
    order = med(concept) if concept else dict(med(cc(text="x")), medicationReference={"reference": "Medication/m"})
    if medication is not None:
        order.pop("medicationCodeableConcept", None)
    typed = msgspec.convert(medication, Medication) if medication is not None else None
    assert strength_mg(msgspec.convert(order, MedicationRequest), typed) == expected


def test_med_entry_strength_and_tablet_units():
    order = med(cc(text="Pyridostigmine Bromide 60 MG Oral Tablet"),
                dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 3, "code": "{pill}"}}]}])
    entry = state(mg(), drafts=[order]).drafts[0]
    assert entry.strength_mg == 60.0
    assert units.dimension("{pill}") == units.dimension("TAB") == units.dimension("{tbl}") == "count"


# ------------------------------------------------------------------ item 5: meta.lastUpdated is no clinical date
def test_undated_iga_loaded_today_is_undated():
    undated = iga(250, None)
    undated["meta"] = {"lastUpdated": NOW.isoformat()}
    status = state(mg(), undated).lab("iga", 365)
    assert status.latest.date is None and "undated" in status.describe()


# ------------------------------------------------------------------ one representation: every reader takes a struct
def test_every_resource_a_reader_reads_is_a_struct_whatever_it_arrived_as():
    """Plain JSON (a key not decoded typed, a fetched Bundle, the fallback decode) is converted
    resource by resource: the readers see structs of hooks.fhir_model only."""
    from hooks.fhir_model import MODELS, STRICT, projection
    from hooks.typed import TypedResources
    allergy = {"resourceType": "AllergyIntolerance", "id": "al-1", "patient": {"reference": f"Patient/{PID}"},
               "code": cc(text="Immune globulin"), "reaction": [{"severity": "severe"}]}
    plex = {"resourceType": "Procedure", "id": "pr-1", "status": "completed", "code": cc(text="Plasma exchange"),
            "subject": {"reference": f"Patient/{PID}"}, "performedDateTime": day(20)}
    pool = ResourcePool()
    for r in (mg(), iga(), admin(IVIG, 30), allergy, plex, med(IVIG, status="active")):
        pool.add(r)
    notes: list[str] = []
    typed = TypedResources(pool, notes)
    for rtype in ("Condition", "Observation", "MedicationAdministration", "AllergyIntolerance", "Procedure",
                  "MedicationRequest"):
        (sent,), (found,) = pool.of_type(rtype), typed.of_type(rtype)
        assert type(found) is MODELS[rtype]
        assert typed.validated(found) == projection(sent)  # validated as the JSON sent
        if rtype not in STRICT:  # the bulk of a chart keeps nothing of what it was sent as
            assert typed.original(found) == sent and typed.original(found) is not sent
    assert notes == []


def test_a_draft_with_a_malformed_element_is_evaluated_without_it_and_says_so():
    """rules.md v2: a failure to read one resource is a data-quality note, never a dropped draft."""
    order = dict(RITUXIMAB_REF, dosageInstruction="weekly", medicationCodeableConcept=RITUXIMAB)
    order.pop("medicationReference")
    st = state(mg(), drafts=[order])
    assert [d.classes for d in st.drafts] == [("drug-rituximab",)]
    assert st.drafts[0].resource is order  # the rules read its dose, and update it, as it was sent
    assert st.original(st.drafts[0]) == order and st.original(st.drafts[0]) is not order
    assert any(n.startswith("draft MedicationRequest/rx-ritux: dosageInstruction: Expected `") and
               n.endswith("read without it") for n in st.data_quality)


def test_a_chart_resource_with_a_malformed_element_is_read_without_it_and_is_still_invalid():
    """An allergy whose reaction is malformed still names its drug; validated as sent, it is not
    valid FHIR R4, so a rule that checks it skips it with a note."""
    allergy = {"resourceType": "AllergyIntolerance", "id": "al-2", "patient": {"reference": f"Patient/{PID}"},
               "code": cc(text="Immune globulin"), "reaction": "anaphylaxis"}
    st = state(mg(), allergy)
    assert st.allergies == []  # not valid FHIR R4: skipped, as before
    notes = [n for n in st.data_quality if "al-2" in n]  # one note on it: it was skipped, not read without reaction
    assert len(notes) == 1 and notes[0].startswith("AllergyIntolerance/al-2 skipped: not valid FHIR R4 (reaction")


def test_a_contained_medication_is_read_as_a_struct_with_its_strength():
    order = med(cc(text="x"), dosageInstruction=[{"doseAndRate": [{"doseQuantity": {"value": 2, "code": "{tbl}"}}]}])
    order.pop("medicationCodeableConcept")
    order["medicationReference"] = {"reference": "#m1"}
    order["contained"] = [{"resourceType": "Medication", "id": "m1", "code": cc(text="Mestinon"), "ingredient": [
        {"strength": {"numerator": {"value": 60, "code": "mg"}, "denominator": {"value": 1, "code": "{tbl}"}}}]}]
    (entry,) = state(mg(), drafts=[order]).drafts
    assert entry.classes == ("drug-pyridostigmine",) and isinstance(entry.medication, Medication)
    assert entry.strength_mg == 60.0


def test_dropping_a_malformed_element_copies_only_its_path_however_deep_the_rest_is():
    deep: object = "x"
    for _ in range(980):  # deeper than a recursive copy could go
        deep = [deep]
    order = dict(RITUXIMAB_REF, medicationCodeableConcept=RITUXIMAB, note=deep, dosageInstruction="weekly")
    order.pop("medicationReference")
    st = state(mg(), drafts=[order])
    assert [d.classes for d in st.drafts] == [("drug-rituximab",)]
    assert order["dosageInstruction"] == "weekly" and st.drafts[0].resource is order  # the draft as sent, intact
