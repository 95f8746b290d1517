"""PatientState: each grade source, each lab status, units, body size and
the messy data real EHRs send."""
from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.valueset import ValueSet

from cds_service.pool import ResourcePool
from fixtures.build_scenarios import (
    IVIG,
    LOCAL,
    LOINC,
    NOW,
    PID,
    SCT,
    admin,
    cc,
    condition,
    day,
    grade,
    height,
    iga,
    lab,
    med,
    mg,
    obs,
    qty,
    weight,
)
from hooks import units
from hooks.builder import build_state
from hooks.knowledge import HERE, load
from hooks.validation import validation_error

from .conftest import SCENARIOS, chart_state, load_json

state = chart_state


# ------------------------------------------------------------------ MG present and grade sources
def test_no_mg_condition_means_not_present():
    assert not state(weight()).mg_present


def test_resolved_mg_is_present_not_active_and_refuted_is_not_present():
    resolved = state(mg(status="resolved"))
    assert resolved.mg_present and not resolved.mg_active  # rules.md v2: still counts for safety rules
    refuted = mg(verificationStatus=cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted"))
    assert not state(refuted).mg_present


def test_status_less_mg_condition_is_present():
    assert state(mg(status=None)).mg_present


def test_mg_by_icd10_and_by_name():
    assert state(condition(cc("http://hl7.org/fhir/sid/icd-10-cm", "G70.01"))).mg_present
    st = state(condition(cc(text="Generalized myasthenia gravis, AChR positive")))
    assert st.mg_present and "matched by name" in st.mg_evidence[0]


def test_grade_unknown_without_evidence():
    st = state(mg())
    assert st.grade is None and "unknown" in st.grade_text()


@pytest.mark.parametrize("value,expected", [(2, 2), (3, 3), (4, 4)])
def test_explicit_grade(value, expected):
    assert state(mg(), grade(value)).grade == expected


def test_explicit_grade_1_is_read_as_2_and_says_so():
    st = state(mg(), grade(1))
    assert st.grade == 2 and "read as grade 2" in st.grade_text()


def test_explicit_grade_as_coded_ctcae_value():
    st = state(mg(), obs(cc(LOCAL, "mg-grade"), 1, valueCodeableConcept=cc(text="CTCAE Grade 3")))
    assert st.grade == 3


@pytest.mark.parametrize("mgfa,expected", [("I", None), ("IIa", None), ("IIIb", None), ("IVa", None), ("IVb", 3),
                                           ("V", 4), ("Class IIIa", None)])
def test_mgfa_class_outside_ici_related_mg(mgfa, expected):
    """rules.md v2: outside ICI-related MG only V, IVb (and IVa with bulbar/respiratory evidence) grade;
    the class is reported either way."""
    st = state(mg(), obs(cc(LOCAL, "mgfa-class"), 1, valueString=mgfa))
    assert st.grade == expected and st.mgfa_class.lower() == mgfa.lower().replace("class ", "")


def test_crisis_condition_is_grade_4():
    st = state(mg(), condition(cc(SCT, "80976008", "Myasthenic crisis"), days_ago=2))
    assert st.grade == 4 and st.grade_evidence[0].source == "crisis"


def test_mechanical_ventilation_for_mg_is_grade_4():
    proc = {"resourceType": "Procedure", "id": "vent", "status": "in-progress", "code": cc(text="Mechanical ventilation"),
            "subject": {"reference": f"Patient/{PID}"}, "performedDateTime": day(1),
            "reasonCode": [cc(text="Myasthenic crisis")]}
    assert state(mg(), proc).grade == 4


def test_fvc_per_kg_needs_weight_and_uses_it():
    fvc = lab("19868-9", "FVC", 1, **qty(1300, "mL"))
    assert state(mg(), weight(72), fvc).grade == 3          # 18.1 mL/kg
    assert state(mg(), weight(50), fvc).grade is None       # 26 mL/kg
    st = state(mg(), fvc)
    assert st.grade is None and "no weight" in " ".join(st.grade_notes)


@pytest.mark.parametrize("value,expected", [(-18, 3), (18, 3), (-29, 3), (-30, None), (-45, None), (45, None)])
def test_nif_either_sign(value, expected):
    nif = obs(cc(text="NIF"), 1, **qty(value, "cm[H2O]"))
    assert state(mg(), nif).grade == expected


def test_dysphagia_condition_and_observation():
    assert state(mg(), condition(cc(text="Oropharyngeal dysphagia"), days_ago=2)).grade == 3
    assert state(mg(), obs(cc(text="Dysphagia"), 1, valueString="present")).grade == 3
    assert state(mg(), obs(cc(text="Dysphagia"), 1, valueString="absent")).grade is None


@pytest.mark.parametrize("severity", ["Moderate", "Severe", "Mild"])
def test_condition_severity_is_reported_never_graded(severity):
    st = state(mg(days_ago=3, severity=cc(text=severity)))
    assert st.grade is None and severity in st.severity[0] and st.explain()["mg_severity"] == st.severity


def test_latest_per_kind_then_highest_within_30_days_and_old_evidence_is_ignored():
    st = state(mg(), grade(2, 3), condition(cc(SCT, "80976008"), days_ago=45))
    assert st.grade == 2
    st = state(mg(), grade(2, 3), grade(3, 10))  # the latest explicit grade is 2
    assert st.grade == 2
    st = state(mg(), grade(2, 3), obs(cc(text="NIF"), 10, **qty(-20, "cm[H2O]")))  # NIF grades 3
    assert st.grade == 3


def test_grade_evidence_without_mg_is_not_a_grade():
    st = state(obs(cc(text="NIF"), 1, **qty(-10, "cm[H2O]")))
    assert not st.mg_present and st.grade is None


# ------------------------------------------------------------------ lab status
def test_lab_missing():
    assert state(mg()).lab("iga", 365).status == "missing"


def test_lab_result_normalised_with_interpretation():
    st = state(mg(), iga(0.05, unit="g/L"))
    s = st.lab("iga", 365)
    assert s.status == "result" and s.latest.value == pytest.approx(5.0)


def test_lab_stale_says_older_than_window():
    s = state(mg(), iga(days_ago=400)).lab("iga", 365)
    assert s.status == "stale" and "older than 12 months" in s.describe()


def test_lab_pending_from_preliminary_observation_or_service_request():
    assert state(mg(), obs(cc(LOINC, "2458-8"), 1, status="preliminary")).lab("iga", 365).status == "pending"
    sr = {"resourceType": "ServiceRequest", "id": "s", "status": "active", "intent": "order",
          "code": cc(LOINC, "2458-8"), "subject": {"reference": f"Patient/{PID}"}, "authoredOn": day(1)}
    assert state(mg(), sr).lab("iga", 365).status == "pending"


def test_lab_unavailable_when_observations_could_not_be_fetched():
    s = state(mg(), unavailable=["observations"]).lab("iga", 365)
    assert s.status == "unavailable" and "could not be retrieved" in s.describe()


def test_local_code_matched_by_name_and_says_so():
    s = state(mg(), obs(cc("urn:local", "X1", "IgA, serum"), 10, **qty(200, "mg/dL"))).lab("iga", 365)
    assert s.status == "result" and s.latest.matched_by == "text" and "matched by name" in s.describe()


def test_name_match_excludes_lookalikes():
    ttg = obs(cc("urn:local", "X2", "Tissue transglutaminase IgA antibody"), 10, **qty(2, "U/mL"))
    assert state(mg(), ttg).lab("iga", 365).status == "missing"


@pytest.mark.parametrize("value,interp", [("Positive", "positive"), ("Reactive", "positive"),
                                          ("Non-reactive", "negative"), ("NEGATIVE", "negative"),
                                          ("Not detected", "negative"), ("Indeterminate", "indeterminate")])
def test_qualitative_strings(value, interp):
    s = state(mg(), lab("16128-1", "HCV Ab", 10, valueString=value)).lab("hcv-ab", 365)
    assert s.latest.interpretation == interp


def test_interpretation_from_reference_range_then_observation_interpretation():
    high = lab("10839-9", "Troponin I", 1, **qty(0.9, "ng/mL"),
               referenceRange=[{"high": {"value": 0.04, "unit": "ng/mL", "code": "ng/mL", "system": "http://unitsofmeasure.org"}}])
    assert state(mg(), high).lab("troponin", 7).latest.interpretation == "high"
    coded = lab("10839-9", "Troponin I", 1, **qty(0.01, "ng/mL"),
                interpretation=[cc("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "N")])
    assert state(mg(), coded).lab("troponin", 7).latest.interpretation == "normal"


def test_less_than_string_keeps_comparator():
    s = state(mg(), lab("2458-8", "IgA", 10, valueString="<7 mg/dL")).lab("iga", 365)
    assert s.latest.value == 7 and s.latest.reading.comparator == "<"


def test_unknown_unit_cannot_be_interpreted():
    st = state(mg(), iga(3, unit="furlongs"))
    s = st.lab("iga", 365)
    assert s.latest.value is None and any("cannot be interpreted" in n for n in st.data_quality)


# ------------------------------------------------------------------ units and body size
@pytest.mark.parametrize("value,unit,target,expected", [
    (7, "mg/dL", "g/L", 0.07), (0.07, "g/L", "mg/dL", 7), (70, "mg/L", "mg/dL", 7), (160, "[lb_av]", "kg", 72.57),
    (1.5, "g", "mg", 1500), (2, "kg", "g", 2000), (70, "[in_i]", "cm", 177.8), (1.2, "L", "mL", 1200),
    (-20, "cm[H2O]", "cm[H2O]", -20), (1.8, "m2", "m2", 1.8), (400, "mg/kg", "g/kg", 0.4)])
def test_unit_conversions(value, unit, target, expected):
    assert units.convert(value, unit, target) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("unit,target", [("vial", "g"), ("mg", "mL"), (None, "kg"), ("kg", "m2")])
def test_unknown_or_mismatched_units_give_none(unit, target):
    assert units.convert(1, unit, target) is None


def test_body_size_and_mosteller_bsa():
    st = state(mg(), weight(72), height(175))
    assert st.body.bsa_m2 == pytest.approx(((175 * 72) / 3600) ** 0.5)
    assert "Mosteller" in st.body.bsa_source


def test_latest_weight_within_90_days_in_pounds():
    st = state(mg(), weight(90, days_ago=200), weight(154, days_ago=10, unit="[lb_av]"))
    assert st.body.weight_kg == pytest.approx(69.85, rel=1e-3)
    assert state(mg(), weight(90, days_ago=200)).body.weight_kg is None


@pytest.mark.parametrize("kg", [-72, 0])
def test_a_weight_that_is_not_positive_is_a_problem_not_a_dose_basis(kg):
    st = state(mg(), weight(72, days_ago=30), weight(kg, days_ago=2), height(175))  # found by fuzzing: sqrt < 0
    assert st.body.weight_kg is None and st.body.bsa_m2 is None
    assert st.body.problems == [f"Body weight {kg:g} kg ({day(2)}): not a positive value"]


def test_recorded_bsa_wins():
    bsa = obs(cc(text="Body surface area"), 3, **qty(1.5, "m2"))
    assert state(mg(), weight(), height(), bsa).body.bsa_m2 == 1.5


# ------------------------------------------------------------------ medications
def test_medication_classification_by_code_class_and_text():
    st = state(mg(), med(cc("http://www.whocc.no/atc", "J01FA10"), status="active"),
               med(cc(text="Levofloxacin 500 mg tab"), status="active"),
               med(cc("http://www.nlm.nih.gov/research/umls/rxnorm", "121191"), status="active"))
    classes = {c for m in st.meds for c in m.classes}
    assert {"drug-macrolide", "drug-fluoroquinolone", "drug-rituximab"} <= classes
    assert any(m.matched_by == "text" for m in st.meds)


def test_immune_globulin_route_decides_ivig_or_scig():
    iv = med(cc(text="Immune globulin (human) 10%"), status="active",
             dosageInstruction=[{"route": {"text": "Intravenous"}}])
    sc = med(cc(text="Immune globulin (human) 20%"), status="active",
             dosageInstruction=[{"route": {"text": "Subcutaneous"}}])
    st = state(mg(), iv, sc)
    assert [m.classes for m in st.meds] == [["drug-ivig"], ["drug-scig"]]


def test_hepatitis_b_immune_globulin_is_not_ivig():
    assert state(mg(), med(cc(text="Hepatitis B immune globulin"), status="active")).meds == []


def test_medication_reference_contained_bundled_and_unresolved():
    contained = med(None, status="active", contained=[{"resourceType": "Medication", "id": "m1", "code": cc(text="rituximab")}])
    del contained["medicationCodeableConcept"]
    contained["medicationReference"] = {"reference": "#m1"}
    bundled = med(None, status="active")
    del bundled["medicationCodeableConcept"]
    bundled["medicationReference"] = {"reference": "Medication/m2"}
    medication = {"resourceType": "Medication", "id": "m2", "code": cc("http://www.whocc.no/atc", "L01FF02")}
    broken = med(None, status="active")
    del broken["medicationCodeableConcept"]
    broken["medicationReference"] = {"reference": "Medication/missing"}
    st = state(mg(), contained, bundled, medication, broken)
    assert sorted(c for m in st.meds for c in m.classes) == ["drug-ici", "drug-rituximab"]
    assert any("could not be resolved" in n for n in st.data_quality)


def test_ivig_course_dates_from_administrations():
    st = state(mg(), admin(IVIG, 40), admin(IVIG, 39), admin(IVIG, 5))
    assert len(st.ivig_dates) == 3


# ------------------------------------------------------------------ messy data
def test_missing_effective_uses_issued_else_undated_never_last_updated():
    a = obs(cc(LOINC, "2458-8"), None, **qty(200, "mg/dL"), issued=day(10) + "T00:00:00Z")
    assert state(mg(), a).lab("iga", 365).latest.date.date().isoformat() == day(10)
    # meta.lastUpdated is when a server stored the record, not a clinical date (issue 16 item 5)
    b = obs(cc(LOINC, "2458-8"), None, **qty(200, "mg/dL"), meta={"lastUpdated": day(0) + "T00:00:00Z"})
    s = state(mg(), b).lab("iga", 365)
    assert s.status == "stale" and s.latest.date is None and "undated" in s.describe()
    assert state(mg(), b).lab_ever("iga").status == "result"


def test_effective_period_is_read():
    o = obs(cc(LOINC, "2458-8"), None, **qty(200, "mg/dL"), effectivePeriod={"start": day(12), "end": day(11)})
    assert state(mg(), o).lab("iga", 365).latest.date.date().isoformat() == day(11)


def test_components_are_classified():
    panel = obs(cc(text="Pulmonary function panel"), 1, component=[
        {"code": cc(LOINC, "19868-9", "FVC"), **qty(1.0, "L")},
        {"code": cc(text="Negative inspiratory force"), **qty(-40, "cm[H2O]")}])
    st = state(mg(), weight(72), panel)
    assert st.lab("fvc", 30).status == "result" and st.lab("nif", 30).status == "result"
    assert st.grade == 3  # 1000 mL / 72 kg = 13.9 mL/kg


def test_entered_in_error_and_cancelled_are_ignored():
    st = state(mg(), obs(cc(LOINC, "2458-8"), 5, status="entered-in-error", **qty(2, "mg/dL")),
               med(cc(text="azithromycin"), status="cancelled"))
    assert st.lab("iga", 365).status == "missing" and st.meds == []


def test_duplicates_across_keys_are_kept_once():
    pool = ResourcePool()
    o = iga()
    pool.add({"resourceType": "Bundle", "entry": [{"resource": o}]})
    pool.add({"resourceType": "Bundle", "entry": [{"resource": dict(o)}]})
    assert len(build_state(pool, PID, NOW).lab_results["iga"]) == 1


def test_other_patients_resources_are_ignored_and_counted():
    other = dict(grade(3), subject={"reference": "Patient/someone-else"})
    st = state(mg(), other)
    assert st.grade is None and any("another patient" in n for n in st.data_quality)


def test_unknown_resource_types_are_ignored():
    st = state(mg(), {"resourceType": "Basic", "id": "b"}, {"resourceType": "MedicationOrder", "id": "dstu2"})
    assert st.mg_present


def test_invalid_resource_is_skipped_with_a_note():
    bad = obs(cc(LOINC, "2458-8"), 5, valueQuantity={"value": "lots"})
    st = state(mg(), bad, iga(180))
    assert st.lab("iga", 365).latest.value == 180
    assert any("not valid FHIR R4" in n for n in st.data_quality)


def test_prefetch_values_that_are_not_resources_are_noted():
    pool = ResourcePool()
    pool.add_all([("user", "123"), ("patient", {"resourceType": "Patient", "id": PID})])
    assert pool.ignored == ["prefetch.user is not a FHIR resource and was ignored"]


# ------------------------------------------------------------------ knowledge and fixtures
def test_value_sets_are_valid_fhir_and_cite_sources():
    for path in sorted((HERE / "valuesets").glob("*.json")):
        data = json.loads(path.read_text())
        ValueSet.model_validate(data)
        for inc in data["compose"]["include"]:
            for concept in inc.get("concept", []):
                assert concept["extension"][0]["url"] == "urn:mg-cds:source"
                assert concept["extension"][0]["valueString"]


def test_thresholds_each_have_a_source():
    for name, entry in load().thresholds.items():
        if not name.startswith("_"):
            assert entry["source"], name


DELIBERATELY_BROKEN = {"messy-chart": {"Observation/broken"}, "pyridostigmine-tid-text": {"MedicationRequest/*"}}


@pytest.mark.parametrize("name", sorted(p.name for p in SCENARIOS.iterdir()))
def test_fixture_resources_are_valid_fhir_r4(name):
    request = load_json(SCENARIOS / name / "request.json")
    # the patient under "patient", or in a Bundle under a client's own key (fidelity-prefetch-foreign-keys)
    resources = [e["resource"] for v in request["prefetch"].values() if v and v["resourceType"] == "Bundle"
                 for e in v["entry"]] + [v for v in request["prefetch"].values() if v and v["resourceType"] == "Patient"]
    resources += [e["resource"] for e in request["context"].get("draftOrders", {}).get("entry", [])]
    allowed = DELIBERATELY_BROKEN.get(name, set())
    for r in resources:
        ref = f"{r['resourceType']}/{r.get('id')}"
        if ref in allowed or f"{r['resourceType']}/*" in allowed:
            continue
        assert validation_error(r) is None, (ref, validation_error(r))


def test_invalid_draft_is_evaluated_and_explained():
    draft = med(cc(text="azithromycin 250 mg"), dosageInstruction={"not": "a list"})
    st = state(mg(), drafts=[draft])
    assert [list(d.classes) for d in st.drafts] == [["drug-macrolide"]]
    assert any("evaluated as sent" in n for n in st.explain()["data_quality"])


@pytest.mark.parametrize("code,expected", [("24484000", "Severe"), ("6736007", "Moderate")])
def test_condition_severity_as_a_bare_code_is_reported_by_its_display(code, expected):
    st = state(mg(days_ago=3, severity={"coding": [{"system": SCT, "code": code}]}))
    assert st.grade is None and expected.lower() in st.severity[0].lower()


def test_validation_verdicts_are_remembered_per_exact_content(monkeypatch):
    from hooks import validation
    calls = []
    real = validation._validate
    monkeypatch.setattr(validation, "_validate", lambda r: calls.append(r.get("id")) or real(r))
    monkeypatch.setattr(validation, "_verdicts", {})
    good, bad = iga(180), obs(cc(LOINC, "2458-8"), 5, valueQuantity={"value": "lots"})
    assert validation_error(good) is None and validation_error(dict(good)) is None  # same content: once
    first = validation_error(bad)
    assert first and validation_error(bad) == first
    changed = dict(good, status="amended")
    assert validation_error(changed) is None
    assert calls == [good["id"], bad["id"], changed["id"]]
    monkeypatch.setattr(validation, "VERDICTS_MAX", 0)  # CDS_VALIDATION_CACHE=0: every call validates
    validation_error(good)
    assert calls[-1] == good["id"] and len(calls) == 4


def test_pool_resolves_references_added_after_an_earlier_resolve():
    pool = ResourcePool()
    pool.add({"resourceType": "Medication", "id": "m1"})
    assert pool.resolve("Medication/m1")["id"] == "m1" and pool.resolve("Medication/m2") is None
    pool.add({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Medication", "id": "m2"}},
                                                  {"resource": {"resourceType": "Medication", "id": "m1", "x": 1}}]})
    assert pool.resolve("Medication/m2")["id"] == "m2"
    assert "x" not in pool.resolve("Medication/m1")  # the first copy wins
