"""Typed decoding of the prefetch (cds_service.decode, hooks.fhir_model): the same
answers as plain JSON for every scenario, plain JSON whenever a body does not fit
the models, and the same 400s for bodies that are not JSON."""
from __future__ import annotations

import json

import pytest

from cds_service.decode import TypedBundle, decode_body
from cds_service.invocation import hook_input
from hooks.services import SERVICES

from .conftest import SCENARIOS, load_json, scenario_names, typed_and_plain_answers

BY_ID = {s.id: s for s in SERVICES}


def _scenario(name: str) -> tuple[bytes, dict]:
    return (SCENARIOS / name / "request.json").read_bytes(), load_json(SCENARIOS / name / "expected.json")


@pytest.mark.parametrize("name", scenario_names())
def test_typed_decoding_answers_exactly_as_plain_json(name, app):
    """Including numbers no float holds (10^400: a note, issue 16 item 0b) on both paths."""
    raw, expected = _scenario(name)
    service = BY_ID[expected["service"]]
    body = decode_body(raw, service.decoder)
    if set(body["prefetch"]) <= set(service.prefetch):  # keys of the client's own go the plain way
        assert isinstance(body["prefetch"]["conditions"], TypedBundle)  # the scenario took the typed path
    typed, plain = typed_and_plain_answers(raw, service, app)
    assert typed == plain


def _with_observations(entries: list[dict], drop: tuple[str, ...] = (), **prefetch) -> bytes:
    raw, _ = _scenario("ivig-dose-too-high")
    request = json.loads(raw)
    request["prefetch"]["observations"] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    request["prefetch"].update(prefetch)
    for key in drop:
        request["prefetch"].pop(key, None)
    return json.dumps(request).encode()


OBS = {"resourceType": "Observation", "id": "w", "status": "final",
       "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
       "effectiveDateTime": "2026-11-20T09:00:00Z", "valueQuantity": {"value": 72, "unit": "kg"}}


@pytest.mark.parametrize("entries, extra", [
    ([{"resource": OBS}, {"resource": {"resourceType": "Patient", "id": "p"}}], {}),  # another type
    ([{"resource": dict(OBS, code={"coding": {"code": "29463-7"}})}], {}),  # an object where an array belongs
    ([{"resource": OBS}], {"custom": {"resourceType": "Patient", "id": "p"}}),  # a key the service does not know
    ([{"resource": {k: v for k, v in OBS.items() if k != "resourceType"}}], {}),  # not a resource at all
], ids=["other-type-in-bundle", "malformed-coding", "unknown-prefetch-key", "entry-without-resourceType"])
def test_a_body_the_models_do_not_fit_is_read_as_plain_json(entries, extra, app):
    service = BY_ID["mg-order-select"]
    raw = _with_observations(entries, **extra)
    assert isinstance(decode_body(raw, service.decoder)["prefetch"]["observations"], dict)
    typed, plain = typed_and_plain_answers(raw, service, app)
    assert typed == plain


def test_a_search_outcome_entry_stays_on_the_typed_path_and_changes_nothing(app):
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}
    raw = _with_observations([{"resource": OBS}, {"resource": outcome, "search": {"mode": "outcome"}}])
    service = BY_ID["mg-order-select"]
    assert isinstance(decode_body(raw, service.decoder)["prefetch"]["observations"], TypedBundle)
    typed, plain = typed_and_plain_answers(raw, service, app)
    assert typed == plain


def test_typed_bundle_keeps_only_what_rules_read_and_null_or_absent_keys_are_kept_apart():
    full = dict(OBS, category=[{"text": "vital-signs"}], performer=[{"reference": "Practitioner/1"}],
                text={"status": "generated", "div": "<div>72 kg</div>"})
    raw = _with_observations([{"fullUrl": "urn:uuid:1", "resource": full}], drop=("serviceRequests",),
                             procedures=None)
    body = decode_body(raw, BY_ID["mg-order-select"].decoder)
    obs = body["prefetch"]["observations"].entry[0].resource
    assert (obs.id, obs.valueQuantity.value, obs.code.coding[0].code) == ("w", 72, "29463-7")
    assert not hasattr(obs, "category") and not hasattr(obs, "text")
    assert body["prefetch"]["procedures"] is None  # null: "no data", never fetched
    assert "serviceRequests" not in body["prefetch"]  # absent: to be fetched


def test_a_malformed_resource_read_from_plain_json_is_skipped_with_a_note(client):
    bad = dict(OBS, id="bad", component={"code": "not an array"})
    raw = _with_observations([{"resource": bad}, {"resource": OBS}],
                             custom=None)  # the unknown key sends the whole body to plain JSON
    resp = client.post("/cds-services/mg-order-select", data=raw, content_type="application/json")
    assert resp.status_code == 200
    service = BY_ID["mg-order-select"]
    hook_in, _ = hook_input(decode_body(raw, service.decoder), service, client.application.config)
    explained = service.explain(hook_in)
    assert any(n.startswith("Observation/bad could not be read") for n in explained["data_quality"])
    assert explained["body_size"]["weight_kg"] == 72  # the well-formed weight is still read


@pytest.mark.parametrize("raw", [b'{"hook": "order-select",', b'{"hook": "\xff"}', b"[" * 5000 + b"]" * 5000,
                                 b'{"prefetch": {"observations": NaN}}'])
def test_bodies_that_are_not_json_are_400_whichever_decoder_reads_them(client, raw):
    resp = client.post("/cds-services/mg-order-select", data=raw, content_type="application/json")
    assert resp.status_code == 400
    assert "not valid JSON" in resp.get_json()["issue"][0]["details"]["text"]


def test_chart_resources_typed_or_plain_validate_the_elements_rules_read():
    import msgspec

    from hooks.fhir_model import Observation, projection
    from hooks.validation import validation_error
    obs = dict(OBS, subject={"reference": "Patient/1"})
    assert validation_error(projection(msgspec.convert(obs, Observation))) is None
    assert validation_error(projection(obs)) is None
    assert "valueQuantity.value" in validation_error(projection(dict(obs, valueQuantity={"value": "lots"})))
    # an element no rule reads is not validated, typed or not; the draft check sees the whole resource
    messy = dict(obs, performer="Dr Who")
    assert validation_error(projection(messy)) is None
    assert validation_error(projection(msgspec.convert(messy, Observation))) is None
    assert "performer" in validation_error(messy)


# --- chart medications: typed, read leniently, and sent back whole in update suggestions
ICI = {"resourceType": "MedicationRequest", "id": "rx-50", "status": "active", "intent": "order",
       "medicationReference": {"reference": "Medication/pembro"},
       "subject": {"reference": "Patient/mg-pt-1"}, "authoredOn": "2026-10-16",
       "requester": {"reference": "Practitioner/onc"}, "note": [{"text": "cycle 3 of 6"}],
       "dispenseRequest": {"validityPeriod": {"start": "2026-10-16"}},
       "dosageInstruction": [{"text": "200 mg IV every 3 weeks", "route": {"text": "intravenous"},
                              "timing": {"repeat": {"frequency": 1, "period": 3, "periodUnit": "wk"}},
                              "doseAndRate": [{"doseQuantity": {"value": 200, "unit": "mg"}}]}]}
PEMBRO = {"resourceType": "Medication", "id": "pembro", "form": {"text": "injection"},
          "code": {"coding": [{"system": "http://www.whocc.no/atc", "code": "L01FF02", "display": "pembrolizumab"}]}}


def _grade3_with_medications(*resources: dict, **prefetch) -> bytes:
    raw, _ = _scenario("pv-ici-grade3")
    request = json.loads(raw)
    request["prefetch"]["medications"] = {"resourceType": "Bundle", "type": "searchset",
                                          "entry": [{"resource": r} for r in resources]}
    request["prefetch"].update(prefetch)
    return json.dumps(request).encode()


def _discontinue_updates(client, raw: bytes) -> list[dict]:
    resp = client.post("/cds-services/mg-patient-view", data=raw, content_type="application/json")
    assert resp.status_code == 200
    cards = [c for c in resp.get_json()["cards"] if c["source"]["topic"]["code"] == "ici-discontinue"]
    assert len(cards) == 1 and cards[0]["indicator"] == "critical"
    updates = [a["resource"] for s in cards[0].get("suggestions", []) for a in s["actions"] if a["type"] == "update"]
    for update in updates:  # rules.md v2: the order as received, with the new status and a statusReason
        assert update.pop("statusReason")["text"]
    return updates


@pytest.mark.parametrize("extra", [{}, {"custom": None}], ids=["typed", "plain-json"])
def test_a_stop_suggestion_sends_the_medication_request_as_the_ehr_sent_it(client, extra):
    raw = _grade3_with_medications(ICI, PEMBRO, **extra)
    service = BY_ID["mg-patient-view"]
    assert isinstance(decode_body(raw, service.decoder)["prefetch"]["medications"], TypedBundle) == (not extra)
    assert _discontinue_updates(client, raw) == [dict(ICI, status="stopped")]  # every element, not the model's


def test_the_stop_suggestion_sends_the_resource_read_even_when_another_shares_its_id(client, app):
    other = {"resourceType": "MedicationRequest", "id": "rx-50", "status": "active", "intent": "order",
             "medicationCodeableConcept": {"text": "Omeprazole 20 MG capsule"}, "subject": ICI["subject"]}
    raw = _grade3_with_medications(other, ICI, PEMBRO)  # the first rx-50 is no drug a rule reads
    assert _discontinue_updates(client, raw) == [dict(ICI, status="stopped")]
    typed, plain = typed_and_plain_answers(raw, BY_ID["mg-patient-view"], app)
    assert typed == plain


def test_a_malformed_element_no_rule_reads_does_not_hide_a_chart_medication(client, app):
    messy = dict(ICI, dispenseRequest="next week", note="cycle 3")  # strings where FHIR has an object, an array
    raw = _grade3_with_medications(messy, PEMBRO)
    assert isinstance(decode_body(raw, BY_ID["mg-patient-view"].decoder)["prefetch"]["medications"], TypedBundle)
    assert _discontinue_updates(client, raw) == [dict(messy, status="stopped")]
    typed, plain = typed_and_plain_answers(raw, BY_ID["mg-patient-view"], app)
    assert typed == plain


@pytest.mark.parametrize("dosage", [{"route": {"text": "IV"}}, [{"route": "intravenous"}]],
                         ids=["object-for-array", "string-for-route"])
def test_a_chart_medication_whose_read_elements_are_malformed_is_skipped_with_a_note(client, app, dosage):
    raw = _grade3_with_medications(dict(ICI, dosageInstruction=dosage), PEMBRO)
    resp = client.post("/cds-services/mg-patient-view", data=raw, content_type="application/json")
    assert "ici-discontinue" not in [c["source"]["topic"]["code"] for c in resp.get_json()["cards"]]
    typed, plain = typed_and_plain_answers(raw, BY_ID["mg-patient-view"], app)
    assert typed == plain
    assert any(n.startswith("MedicationRequest/rx-50 skipped: not valid FHIR R4 (") for n in plain[1][1])


def test_original_is_a_copy_of_the_pooled_resource_and_none_for_a_struct_not_pooled():
    import msgspec

    from cds_service.pool import ResourcePool
    from hooks.fhir_model import MedicationRequest
    pool = ResourcePool()
    pool.add_all([("medications", {"resourceType": "Bundle", "entry": [{"resource": ICI}]})])
    copy = pool.original(ICI)
    copy["status"] = "stopped"
    assert ICI["status"] == "active"  # a copy to change, never the pooled resource
    assert pool.original(msgspec.convert(ICI, MedicationRequest)) is None  # an equal struct is not the resource


def test_a_typed_resource_is_given_back_as_sent_even_with_a_number_beyond_a_double():
    """The struct keeps 1e400 in an element it holds as JSON (inf); parsing the body again for the
    resource as sent must read it as the plain-JSON fallback does, not fail (a 500)."""
    from cds_service.pool import ResourcePool
    from hooks.services import SERVICES
    body = {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1", "patientId": "p"},
            "prefetch": {"observations": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {
                "resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "IgA"},
                "subject": {"reference": "Patient/p"}, "valueQuantity": {"value": 3, "unit": "mg/dL"},
                "extension": [{"url": "u", "valueDecimal": 12345}]}}]}}}
    raw = json.dumps(body).replace("12345", "1e400").encode()
    pool = ResourcePool()
    pool.add_all(decode_body(raw, SERVICES[2].decoder)["prefetch"].items())
    observation = next(iter(pool.of_type("Observation")))
    assert not isinstance(observation, dict)  # decoded typed
    assert pool.original(observation)["extension"] == [{"url": "u", "valueDecimal": float("inf")}]
