"""Contract and fuzzing: the OpenAPI document matches the spec's example
messages; schemathesis sends generated and mutated requests to every
operation (zero 5xx, every error an OperationOutcome with a message); and
hypothesis feeds random and mutated FHIR resources to the state builder.

Examples per operation: FUZZ_EXAMPLES (default 60 in the normal suite;
`make reliability` runs 1,000)."""
from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from cds_service import create_app
from cds_service.pool import ResourcePool
from hooks.builder import build_state

from .conftest import CONFORMANCE, SCENARIOS, load_json, scenario_names, typed_and_plain_answers

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
SPEC = CONFORMANCE / "spec-2.0.1"
APP = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                  "CDS_LOG_LEVEL": "ERROR", "CDS_RECORD_CARDS": False})
DOC = APP.test_client().get("/openapi.json").get_json()


def validate(instance, component: str) -> None:
    jsonschema.validate(instance, {"$ref": f"#/components/schemas/{component}", "components": DOC["components"]})


@pytest.mark.parametrize("name,component", [
    ("response-cards.json", "CDSResponse"), ("response-no-cards.json", "CDSResponse"),
    ("response-system-actions.json", "CDSResponse"), ("discovery-response.json", "Discovery"),
    ("feedback-accepted.json", "Feedback"), ("feedback-overridden.json", "Feedback"),
    ("feedback-overridden-with-reason.json", "Feedback"), ("request-patient-view.json", "Request_patient_view")])
def test_openapi_schemas_accept_the_spec_examples(name, component):
    validate(load_json(SPEC / name), component)


def test_openapi_schemas_accept_hook_library_contexts_and_the_412_example():
    for hook, fname in (("order_select", "order-select-context-r4.json"), ("order_sign", "order-sign-context-r4.json")):
        body = {"hook": hook.replace("_", "-"), "hookInstance": "i",
                "context": load_json(CONFORMANCE / "hook-library-1.0.1" / fname)["context"]}
        validate(body, f"Request_{hook}")
    validate(load_json(CONFORMANCE / "ballot-3.0.0" / "response-412-operationoutcome.json"), "OperationOutcome")


def test_openapi_schemas_reject_what_the_spec_forbids():
    with pytest.raises(jsonschema.ValidationError):
        validate({"cards": [{"summary": "x" * 140, "indicator": "info", "source": {"label": "l"}}]}, "CDSResponse")
    with pytest.raises(jsonschema.ValidationError):
        validate({"cards": [{"summary": "s", "indicator": "urgent", "source": {"label": "l"}}]}, "CDSResponse")


@pytest.mark.parametrize("name", scenario_names()[:12])
def test_our_responses_match_the_openapi_document(name):
    expected = load_json(SCENARIOS / name / "expected.json")
    body = APP.test_client().post(f"/cds-services/{expected['service']}",
                                  json=load_json(SCENARIOS / name / "request.json")).get_json()
    validate(body, "CDSResponse")


schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_every_operation(case):
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                              response_schema_conformance])
    if response.status_code >= 400:
        body = response.json()
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["details"]["text"]


# ------------------------------------------------------------------ the state builder never raises
RTYPES = ["Observation", "Condition", "MedicationRequest", "MedicationAdministration", "MedicationStatement",
          "Procedure", "ServiceRequest", "AllergyIntolerance", "Medication", "Patient", "Bundle", "Basic"]
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False)
                           | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                           max_leaves=25)
FIELDS = ["code", "status", "valueQuantity", "valueString", "valueCodeableConcept", "effectiveDateTime", "issued",
          "component", "subject", "medicationCodeableConcept", "medicationReference", "dosageInstruction",
          "clinicalStatus", "verificationStatus", "severity", "recordedDate", "onsetDateTime", "referenceRange",
          "interpretation", "contained", "entry", "authoredOn", "performedDateTime", "effectivePeriod", "dosage",
          "reaction", "patient", "reasonCode", "reasonReference", "ingredient", "extension", "occurrenceDateTime"]
random_resource = st.builds(lambda rtype, fields: {"resourceType": rtype, **fields}, st.sampled_from(RTYPES),
                            st.dictionaries(st.sampled_from(FIELDS + ["id"]), json_values, max_size=8))
FIXTURE_RESOURCES = [e["resource"] for name in scenario_names()
                     for v in load_json(SCENARIOS / name / "request.json")["prefetch"].values()
                     if isinstance(v, dict) and v.get("resourceType") == "Bundle" for e in v["entry"]]


@st.composite
def mutated_resource(draw):
    resource = dict(draw(st.sampled_from(FIXTURE_RESOURCES)))
    for key in draw(st.lists(st.sampled_from(sorted(resource) + FIELDS), max_size=3)):
        resource[key] = draw(json_values)
    return resource


@settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(random_resource | mutated_resource(), max_size=12), st.lists(random_resource | mutated_resource(), max_size=3))
def test_state_builder_never_raises(resources, drafts):
    pool = ResourcePool()
    for r in resources:
        pool.add(r)
    state = build_state(pool, "mg-pt-1", datetime(2026, 11, 25, tzinfo=timezone.utc), drafts=drafts)
    state.explain()
    for concept in ("iga", "fvc", "troponin"):
        state.lab(concept, 365).describe()


@settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_resource | mutated_resource())
def test_plain_json_becomes_a_struct_or_a_note_never_an_exception(resource):
    """The one conversion (hooks.typed): a struct of the resource's model, read without what is
    malformed (each element named in a note), or None with a note. An Observation or Condition
    converts whole or not at all (a typed request would have failed on it)."""
    import msgspec

    from hooks.fhir_model import MODELS, STRICT, Coded, projection
    from hooks.typed import TypedResources
    notes: list[str] = []
    typed = TypedResources(ResourcePool(), notes)
    struct = typed.typed(resource)
    rtype = resource["resourceType"] if isinstance(resource["resourceType"], str) else None
    if struct is None:
        assert len(notes) == 1 and "could not be read" in notes[0]
    else:
        assert type(struct) is MODELS.get(rtype, Coded) and len(notes) <= 1
        if rtype not in STRICT:  # read without a malformed element, if any: the JSON as sent is kept
            assert typed.sent(struct) is resource
        else:  # whole: its elements are the JSON's
            assert not notes and msgspec.to_builtins(struct) == projection(resource)


# ------------------------------------------------------------------ typed decoding answers as plain JSON does
TYPED_RTYPES = ["Observation", "Condition", "MedicationRequest"]
typed_resource = st.builds(lambda rtype, fields: {"resourceType": rtype, **fields}, st.sampled_from(TYPED_RTYPES),
                           st.dictionaries(st.sampled_from(FIELDS + ["id"]), json_values, max_size=8))
BASE_REQUEST = load_json(SCENARIOS / "ivig-dose-too-high" / "request.json")
TYPED_FIXTURES = {t: [r for r in FIXTURE_RESOURCES if r.get("resourceType") == t] for t in TYPED_RTYPES}
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=20))
LEAF_PATHS = [("resourceType",), ("id",), ("status",), ("effectiveDateTime",), ("issued",), ("recordedDate",), ("onsetDateTime",),
              ("valueString",), ("valueInteger",), ("valueBoolean",), ("code", "text"), ("code", "coding", 0, "code"),
              ("code", "coding", 0, "system"), ("code", "coding", 0, "display"), ("valueQuantity", "value"),
              ("valueQuantity", "unit"), ("valueQuantity", "code"), ("subject", "reference"), ("intent",),
              ("authoredOn",), ("medicationCodeableConcept", "text"), ("medicationCodeableConcept", "coding", 0, "code"),
              ("medicationReference", "reference"), ("dosageInstruction", 0, "text")]


@st.composite
def leaf_mutated_resource(draw, rtype: str):
    """A scenario's Observation, Condition or MedicationRequest with messy leaf values: still the
    modelled shape."""
    import copy
    resource = copy.deepcopy(draw(st.sampled_from(TYPED_FIXTURES[rtype])))
    for path in draw(st.lists(st.sampled_from(LEAF_PATHS), max_size=3)):
        parent = resource
        try:
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = draw(scalars)
        except (KeyError, IndexError, TypeError):
            pass
    return resource


@settings(max_examples=EXAMPLES * 5, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(leaf_mutated_resource("Observation"), max_size=8)
       | st.lists(typed_resource | mutated_resource(), max_size=8),
       st.lists(leaf_mutated_resource("Condition"), max_size=4) | st.lists(typed_resource | mutated_resource(), max_size=4),
       st.lists(leaf_mutated_resource("MedicationRequest"), max_size=4)
       | st.lists(typed_resource | mutated_resource(), max_size=4))
def test_typed_decoding_answers_as_plain_json_for_any_chart(observations, conditions, medications):
    """Half the charts keep the modelled shape with messy values (the typed path), half are
    anything (mostly plain JSON): the answer and the data-quality notes never differ, for an
    order and for the chart view (where chart medications get stop and hold suggestions)."""
    import json

    from hooks.services import SERVICES
    request = json.loads(json.dumps(BASE_REQUEST))
    request["prefetch"]["observations"] = {"resourceType": "Bundle", "entry": [{"resource": r} for r in observations]}
    request["prefetch"]["conditions"]["entry"] += [{"resource": r} for r in conditions]
    request["prefetch"]["medications"]["entry"] += [{"resource": r} for r in medications]
    chart_view = dict(request, hook="patient-view", context={k: v for k, v in request["context"].items()
                                                             if k in ("userId", "patientId")})
    for body, service_id in ((request, "mg-order-select"), (chart_view, "mg-patient-view")):
        service = next(s for s in SERVICES if s.id == service_id)
        typed, plain = typed_and_plain_answers(json.dumps(body).encode(), service, APP)
        assert typed == plain


# ------------------------------------------------------------------ extreme numbers in every element a rule reads
# Scenarios covering each number a rule reads: lab values and reference ranges, weight (kg, lb), height,
# FVC, NIF, grade, troponin, IVIG/rituximab/pyridostigmine doses, timing, counts, durations, dispense totals.
NUMBER_SCENARIOS = ["ivig-dose-too-high", "ivig-dose-weight-in-lb", "ivig-course-dispense-ok", "rituximab-bsa-dose-ok",
                    "pyridostigmine-too-high", "ici-grade3-fvc", "pv-nif-negative-convention", "pv-troponin-high",
                    "pv-explicit-grade-1", "ivig-iga-deficient-g-per-l"]
# JSON numbers as sent: too large for a float (as a float and as an integer), too small, the float
# limits, zero and negative zero, beyond the exactly representable integers, negative
EXTREMES = ["1e400", "-1e400", "1" + "0" * 400, "-1" + "0" * 400, "1e-400", "5e-324", "1.7976931348623157e308",
            "2.2250738585072014e-308", "0", "-0.0", "9007199254740993", "-1", "2147483648"]
FINITE = {"1e-400", "5e-324", "1.7976931348623157e308", "2.2250738585072014e-308", "0", "-0.0", "9007199254740993",
          "-1", "2147483648"}
MARK = "__mg_cds_number__"


def _number_paths(value, path=()):
    """Every path to a number (not a bool) in a JSON document."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _number_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _number_paths(v, path + (i,))


def _with_number(request: dict, path: tuple, text: str) -> bytes:
    import copy
    import json
    body = copy.deepcopy(request)
    parent = body
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = MARK
    return json.dumps(body).replace(f'"{MARK}"', text).encode()


class _RuleFailures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failed: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "rule_failed":
            self.failed.append(str(getattr(record, "fields", {}).get("rule")))


def _post_extremes(name: str, section: str) -> list[str]:
    """Posts the scenario with each extreme number at each numeric element of ``section`` (prefetch or
    context); returns the rules that failed (a rule that fails is skipped: its card silently missing)."""
    from cds_service.cards import CDSResponse
    from cds_service.logs import get_logger
    request = load_json(SCENARIOS / name / "request.json")
    service = load_json(SCENARIOS / name / "expected.json")["service"]
    client, failures = APP.test_client(), _RuleFailures()
    paths = [(section,) + p for p in _number_paths(request.get(section, {}))]
    get_logger().addHandler(failures)
    try:
        for path in paths:
            for text in EXTREMES:
                resp = client.post(f"/cds-services/{service}", data=_with_number(request, path, text),
                                   content_type="application/json")
                where = f"{name} {'.'.join(map(str, path))}={text[:12]}"
                assert resp.status_code < 500, where
                if text in FINITE:
                    assert resp.status_code == 200, where
                    CDSResponse.from_json(resp.get_json())
                failures.failed[:] = [f"{where}: {rule}" for rule in failures.failed if ":" not in rule] + \
                    [f for f in failures.failed if ":" in f]
    finally:
        get_logger().removeHandler(failures)
    return failures.failed


@pytest.mark.parametrize("name", NUMBER_SCENARIOS)
def test_extreme_numbers_in_the_chart_never_fail(name):
    """Issue 16 item 0b: a number no float (or no plausible measurement) holds in any chart element a rule
    reads is never a 500 and never makes a rule fail; a number a float holds gives a spec-shaped 200."""
    assert _post_extremes(name, "prefetch") == []


@pytest.mark.parametrize("name", ["ivig-dose-too-high", "rituximab-bsa-dose-ok", "pyridostigmine-too-high",
                                  "ivig-course-dispense-ok"])
def test_extreme_numbers_in_draft_orders_never_fail(name):
    """The same for the drafted orders' doses and timing (hooks/dosing reads them with values.to_number)."""
    assert _post_extremes(name, "context") == []
