"""A draft is always evaluated from what can be read of it (rules.md v2: messy data is a
data-quality note, never a dropped draft): a draft with many malformed elements, and list
elements sent as one object (dosageInstruction, ingredient, reasonCode, reaction), as the
readers before the typed structs read them."""
from __future__ import annotations

import copy

import pytest

from fixtures.build_scenarios import IVIG, PID, cc, day, med, mg
from hooks.fhir_model import MAX_DROPPED, AllergyIntolerance, Medication, MedicationRequest, Procedure, read_as
from hooks.fhir_read import as_list, medication_period, strength_mg

from .conftest import SCENARIOS, load_json
from .test_state_readers import state

CIPRO_TEXT = "ciprofloxacin 500 mg tablet"
IG_SC_TEXT = "immune globulin (human) 20% solution"


def _order_select(draft: dict) -> dict:
    """The fluoroquinolone scenario's order-select call (an MG patient) with ``draft`` as its one draft."""
    request = copy.deepcopy(load_json(SCENARIOS / "fluoroquinolone-rxnorm" / "request.json"))
    request["context"]["draftOrders"]["entry"] = [{"resource": draft}]
    request["context"]["selections"] = [f"MedicationRequest/{draft['id']}"]
    return request


def _topics(client, request: dict) -> list[str]:
    resp = client.post("/cds-services/mg-order-select", json=request)
    assert resp.status_code == 200, resp.get_json()
    return [c["source"]["topic"]["code"] for c in resp.get_json()["cards"]]


# ------------------------------------------------------------------ many malformed elements
def _cipro_with_junk_coding(n: int = 25) -> dict:
    return med({"text": CIPRO_TEXT, "coding": list(range(n))}, rid="rx-cipro")


def test_a_draft_with_many_malformed_codings_is_read_from_its_text_with_one_note():
    st = state(mg(), drafts=[_cipro_with_junk_coding()])
    assert [list(d.classes) for d in st.drafts] == [["drug-fluoroquinolone"]]
    notes = [n for n in st.data_quality if n.startswith("draft MedicationRequest/rx-cipro:")]
    assert len(notes) == 1 and "medicationCodeableConcept.coding: Expected `object`, got `int`" in notes[0]
    assert "(in 3 of its items); left out whole" in notes[0] and notes[0].endswith("read without it")


def test_a_draft_with_many_malformed_codings_still_gets_its_fluoroquinolone_card(client):
    assert "mg-exacerbating-drug" in _topics(client, _order_select(_cipro_with_junk_coding()))


def test_read_as_drops_the_container_after_a_few_failures_and_the_top_level_element_as_last_resort():
    struct, dropped = read_as({"code": {"text": "x", "coding": [1, 2, 3, 4]}}, Medication)
    assert struct.code.text == "x" and struct.code.coding is None
    assert dropped[-1].startswith("code.coding: Expected `object`, got `int` (in 3 of its items); left out whole")
    # more than MAX_DROPPED failures, each in its own container: the next one's top-level element goes whole
    many = {"code": {"text": "y"}, "ingredient": [{"strength": {"numerator": i}} for i in range(30)]}
    struct, dropped = read_as(many, Medication)
    assert struct.code.text == "y" and struct.ingredient is None
    assert dropped == [f"ingredient: Expected `object | null`, got `int` (at ingredient[{MAX_DROPPED}].strength.numerator); "
                       "left out whole"]  # the one note names what was dropped: the notes of its parts go with it


# ------------------------------------------------------------------ one object where R4 has an array
def _scig_one_dosage() -> dict:
    return med({"text": IG_SC_TEXT}, rid="rx-ig", dosageInstruction={"route": {"text": "subcutaneous"}})


def test_a_single_object_dosage_instruction_keeps_its_route():
    st = state(mg(), drafts=[_scig_one_dosage()])
    assert [list(d.classes) for d in st.drafts] == [["drug-scig"]]


def test_a_scig_draft_with_one_dosage_object_is_not_checked_as_ivig(client):
    assert _topics(client, _order_select(_scig_one_dosage())) == []
    intravenous = med({"text": IG_SC_TEXT}, rid="rx-ig", dosageInstruction={"route": {"text": "intravenous"}})
    assert "ivig-iga-unknown" in _topics(client, _order_select(intravenous))  # the route decides


def test_a_single_object_dosage_instruction_dates_the_order_by_its_bounds_period():
    order = med(IVIG, rid="rx-ivig", dosageInstruction={"timing": {"repeat": {"boundsPeriod": {"start": day(3)}}}})
    struct, dropped = read_as(order, MedicationRequest)
    start, _ = medication_period(struct)
    assert dropped == [] and start is not None and start.date().isoformat() == day(3)


def test_a_single_object_ingredient_gives_the_tablet_strength():
    medication = {"resourceType": "Medication", "id": "med-p", "code": cc(text="pyridostigmine 60 mg tablet"),
                  "ingredient": {"strength": {"numerator": {"value": 60, "unit": "mg"},
                                              "denominator": {"value": 1, "unit": "tablet"}}}}
    struct, dropped = read_as(medication, Medication)
    assert dropped == [] and strength_mg(med(cc(text="pyridostigmine")), struct) == 60


@pytest.mark.parametrize("model, resource, element", [
    (Procedure, {"reasonCode": cc(text="myasthenia gravis")}, "reasonCode"),
    (Procedure, {"reasonReference": {"reference": "Condition/mg-1"}}, "reasonReference"),
    (AllergyIntolerance, {"reaction": {"severity": "severe"}}, "reaction"),
    (AllergyIntolerance, {"reaction": [{"manifestation": cc(text="anaphylaxis")}]}, "reaction"),
])
def test_a_single_object_list_element_of_a_chart_resource_is_read(model, resource, element):
    struct, dropped = read_as(resource, model)
    assert dropped == [] and len(as_list(getattr(struct, element))) == 1
    if model is AllergyIntolerance and isinstance(resource["reaction"], list):
        assert len(as_list(as_list(struct.reaction)[0].manifestation)) == 1


def test_a_chart_allergy_with_one_reaction_object_has_one_note_its_validation():
    allergy = {"resourceType": "AllergyIntolerance", "id": "al-1", "patient": {"reference": f"Patient/{PID}"},
               "code": cc(text="Immune globulin"), "reaction": {"severity": "severe"}}
    st = state(mg(), allergy)
    assert [n for n in st.data_quality if "al-1" in n] == [
        next(n for n in st.data_quality if n.startswith("AllergyIntolerance/al-1 skipped: not valid FHIR R4"))]


# ------------------------------------------------------------------ one note per resource
def test_an_unreadable_condition_reached_again_through_a_reason_reference_is_noted_once():
    bad = {"resourceType": "Condition", "id": "c-bad", "code": "myasthenic crisis",  # a string for a CodeableConcept
           "subject": {"reference": f"Patient/{PID}"}}
    intubation = {"resourceType": "Procedure", "id": "vent-1", "status": "completed",
                  "code": cc(text="Endotracheal intubation"), "subject": {"reference": f"Patient/{PID}"},
                  "performedDateTime": day(3), "reasonReference": [{"reference": "Condition/c-bad"}]}
    st = state(mg(), bad, intubation)
    assert [n for n in st.data_quality if "c-bad" in n] == ["Condition/c-bad could not be read (ValidationError); skipped"]
    assert any("names no MG reason" in n for n in st.grade_notes)  # the reason could not be read: not grade evidence
