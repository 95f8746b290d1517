"""Typed FHIR R4 shapes of every resource the readers read (Observations,
Conditions, medications, procedures, service requests, allergies, the Medications
they reference), limited to the elements the rules read. The readers take these
structs and nothing else.

Why: a chart is mostly Observations, and parsing them into dicts is most of the
cost of a request. Decoding them straight into these structs (msgspec) skips every
element no rule reads - category, performer, narrative, identifiers - and builds
small slot objects instead of dicts. The service decodes its prefetch with them
(``PREFETCH_MODELS`` in ``hooks.services``); whatever arrives as plain JSON (a
request they do not fit, the keys not decoded typed, fetched Bundles, draft orders)
is converted resource by resource in one place (``hooks.typed.TypedResources``).
An Observation or Condition that does not fit is skipped with a note, as a typed
request would have failed on it; any other resource is read without its malformed
elements (``read_as``), each named in a note, as plain JSON was read before. A chart
resource is validated in the elements its model holds (``projection``) for
Observations, Conditions and MedicationRequests, as sent otherwise.

Leaf values are ``Any``: the readers already judge a code, a unit or a date that is
not a string. So are a few containers read as plain JSON wherever they come from,
always so: Periods, Durations, referenceRange, interpretation, extensions and
contained resources (a contained Medication is converted where it is resolved)."""
from __future__ import annotations

import re
from typing import Any, ClassVar, Optional, Union

import msgspec

_OPTIONS = dict(omit_defaults=True, gc=False)  # no reference cycles: a resource is a tree


class Coding(msgspec.Struct, **_OPTIONS):
    system: Any = None
    code: Any = None
    display: Any = None


class CodeableConcept(msgspec.Struct, **_OPTIONS):
    coding: Optional[list[Coding]] = None
    text: Any = None


class Reference(msgspec.Struct, **_OPTIONS):
    reference: Any = None
    display: Any = None


class Quantity(msgspec.Struct, **_OPTIONS):
    value: Any = None
    comparator: Any = None
    unit: Any = None
    system: Any = None
    code: Any = None


class Valued(msgspec.Struct, **_OPTIONS):
    """value[x], interpretation and referenceRange: an Observation or one of its components."""
    valueQuantity: Optional[Quantity] = None
    valueString: Any = None
    valueCodeableConcept: Optional[CodeableConcept] = None
    valueInteger: Any = None
    valueBoolean: Any = None
    dataAbsentReason: Optional[CodeableConcept] = None
    interpretation: Any = None
    referenceRange: Any = None


class Component(Valued, **_OPTIONS):
    code: Optional[CodeableConcept] = None


class Resource(Valued, tag_field="resourceType", **_OPTIONS):
    """The elements read of every modelled type (value[x] only ever set on an Observation).
    ``resourceType`` is the tag: a Bundle's entries are a tagged union (cds_service.decode), so an
    entry without it, or of a type not modelled, is not read as one."""
    resourceType: ClassVar[str]
    id: Any = None
    status: Any = None
    code: Optional[CodeableConcept] = None
    subject: Optional[Reference] = None


class Observation(Resource, tag="Observation", **_OPTIONS):
    resourceType: ClassVar[str] = "Observation"
    effectiveDateTime: Any = None
    effectiveInstant: Any = None
    effectivePeriod: Any = None
    issued: Any = None
    component: Optional[list[Component]] = None


class Asserted(Resource, **_OPTIONS):
    """A clinician's assertion about the patient (a Condition, an AllergyIntolerance): its statuses and dates."""
    clinicalStatus: Optional[CodeableConcept] = None
    verificationStatus: Optional[CodeableConcept] = None
    onsetDateTime: Any = None
    recordedDate: Any = None


class Condition(Asserted, tag="Condition", **_OPTIONS):
    resourceType: ClassVar[str] = "Condition"
    severity: Optional[CodeableConcept] = None
    onsetPeriod: Any = None
    extension: Any = None  # condition-dueTo: a dysphagia attributed to another cause


class TimingRepeat(msgspec.Struct, **_OPTIONS):
    boundsPeriod: Any = None
    boundsDuration: Any = None  # a course's length (IVIG over 5 days): rare, decoded only when present


class Timing(msgspec.Struct, **_OPTIONS):
    """Only the boundsPeriod is read (it dates the order): typed, so the rest of a timing is skipped."""
    repeat: Optional[TimingRepeat] = None


class Dosage(msgspec.Struct, **_OPTIONS):
    """What is read of a medication's dosage: the route (immune globulin IV or SC; ophthalmic, otic,
    topical), its text and the timing (its boundsPeriod dates the order). Doses are read from
    drafted orders as they were sent (``hooks.dosing``)."""
    text: Any = None
    route: Optional[CodeableConcept] = None
    timing: Optional[Timing] = None


class Medicated(Resource, **_OPTIONS):
    """medication[x] and contained (where a ``#id`` medicationReference points): every medication resource."""
    medicationCodeableConcept: Optional[CodeableConcept] = None
    medicationReference: Optional[Reference] = None
    contained: Any = None


class MedicationRequest(Medicated, tag="MedicationRequest", **_OPTIONS):
    """A prescription of the chart or a drafted order. Card suggestions that update it start from
    the resource as the EHR sent it (``TypedResources.original``), never from this projection."""
    resourceType: ClassVar[str] = "MedicationRequest"
    intent: Any = None
    authoredOn: Any = None
    dosageInstruction: Union[list[Dosage], Dosage, None] = None  # a list in R4; some EHRs send one object


class MedicationAdministration(Medicated, tag="MedicationAdministration", **_OPTIONS):
    resourceType: ClassVar[str] = "MedicationAdministration"
    effectiveDateTime: Any = None
    effectivePeriod: Any = None
    dosage: Union[list[Dosage], Dosage, None] = None  # one object in R4; some EHRs send an array


class MedicationStatement(Medicated, tag="MedicationStatement", **_OPTIONS):
    resourceType: ClassVar[str] = "MedicationStatement"
    effectiveDateTime: Any = None
    effectivePeriod: Any = None
    dateAsserted: Any = None
    dosage: Union[list[Dosage], Dosage, None] = None


class Ratio(msgspec.Struct, **_OPTIONS):
    numerator: Optional[Quantity] = None
    denominator: Optional[Quantity] = None


class Ingredient(msgspec.Struct, **_OPTIONS):
    strength: Optional[Ratio] = None


class Medication(Resource, tag="Medication", **_OPTIONS):
    """A Medication a medicationReference names (a search's ``_include``, a draftOrders entry,
    contained): its code, and its ingredient strength (tablets x strength is a dose)."""
    resourceType: ClassVar[str] = "Medication"
    ingredient: Union[list[Ingredient], Ingredient, None] = None


class Procedure(Resource, tag="Procedure", **_OPTIONS):
    """A plasma exchange, a mechanical ventilation, an ICI infusion recorded as a procedure."""
    resourceType: ClassVar[str] = "Procedure"
    performedDateTime: Any = None
    performedPeriod: Any = None
    reasonCode: Union[list[CodeableConcept], CodeableConcept, None] = None
    reasonReference: Union[list[Reference], Reference, None] = None


class ServiceRequest(Resource, tag="ServiceRequest", **_OPTIONS):
    """A lab ordered (pending), or a drafted plasma exchange."""
    resourceType: ClassVar[str] = "ServiceRequest"
    authoredOn: Any = None
    occurrenceDateTime: Any = None
    occurrencePeriod: Any = None


class Reaction(msgspec.Struct, **_OPTIONS):
    severity: Any = None
    manifestation: Union[list[CodeableConcept], CodeableConcept, None] = None


class AllergyIntolerance(Asserted, tag="AllergyIntolerance", **_OPTIONS):
    resourceType: ClassVar[str] = "AllergyIntolerance"
    patient: Optional[Reference] = None
    reaction: Union[list[Reaction], Reaction, None] = None
    criticality: Any = None
    lastOccurrence: Any = None


class Coded(msgspec.Struct, **_OPTIONS):
    """Any other resource a reference names (a condition-dueTo or reasonReference target): its code."""
    resourceType: Any = None
    id: Any = None
    code: Optional[CodeableConcept] = None


MODELS: dict[str, type[Resource]] = {m.resourceType: m for m in (
    Observation, Condition, MedicationRequest, MedicationAdministration, MedicationStatement, Medication,
    Procedure, ServiceRequest, AllergyIntolerance)}
# validated in the elements their model holds (the bulk of a chart); any other resource as sent
PROJECTED = frozenset({"Observation", "Condition", "MedicationRequest"})
# converted whole or not at all, as a typed request decodes them: one that does not fit is skipped
STRICT = frozenset({"Observation", "Condition"})
MAX_DROPPED = 20  # malformed elements dropped one by one from a resource; then each next one's top-level element
PER_CONTAINER = 3  # malformed items of one container (an array, an object) before the whole container is dropped
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def projection(resource: Any) -> Any:
    """What validating a chart resource covers: for an Observation, Condition or MedicationRequest,
    the elements its model holds (those the rules read) as plain JSON, whether it was decoded typed
    or arrived as plain JSON, so that both give one verdict; any other resource as it is.
    msgspec.ValidationError when an element the model holds is malformed."""
    if isinstance(resource, dict):
        rtype = resource.get("resourceType")
        if rtype not in PROJECTED:
            return resource
        resource = msgspec.convert(resource, MODELS[rtype])
    return msgspec.to_builtins(resource)


def _without(value: Any, steps: list[tuple[str | None, str | None]]) -> Any:
    """A copy of plain JSON without the element at ``steps`` (msgspec's: a name or an index), copied
    only along that path (however deep the rest is); None when there is no such element."""
    (name, index), rest = steps[0], steps[1:]
    if isinstance(value, dict) and name is not None and name in value:
        out: Any = dict(value)
        key: Any = name
    elif isinstance(value, list) and index is not None and int(index) < len(value):
        out, key = list(value), int(index)
    else:
        return None
    if not rest:
        del out[key]
        return out
    inner = _without(value[key], rest)
    if inner is None:
        return None
    out[key] = inner
    return out


def read_as(resource: dict, model: type[msgspec.Struct]) -> tuple[Any, list[str]]:
    """(the struct of ``resource``, the malformed elements left out of it, each "path: why").
    An element that does not fit the model is dropped (from a copy) and the rest read, as plain
    JSON was read. After ``PER_CONTAINER`` failures in one container (the items of a ``coding``
    array) the whole container is dropped; after ``MAX_DROPPED`` failures, the top-level element
    of each next one. Always a struct: what can be read of the resource is read."""
    work, dropped, failures = resource, [], {}  # failures: how many in each container (by its path)
    while True:
        try:
            return msgspec.convert(work, model), dropped
        except msgspec.ValidationError as exc:
            message, _, where = str(exc).partition(" - at `")
            where = where.rstrip("`").removeprefix("$")
        steps = [(m.group(1), m.group(2)) for m in _STEP.finditer(where)]
        if not steps:  # the resource itself (it is an object: not met) - none of it can be read
            return model(), dropped + [f"the resource: {message}"]
        container = _path(steps[:-1])
        failures[container] = failures.get(container, 0) + 1
        if sum(failures.values()) > MAX_DROPPED:
            steps, why = steps[:1], f"{message} (at {where.removeprefix('.')}); left out whole"
        elif steps[:-1] and failures[container] >= PER_CONTAINER:
            steps, why = steps[:-1], f"{message} (in {failures[container]} of its items); left out whole"
        else:
            why = message
        path = _path(steps)
        dropped = [d for d in dropped if not d.startswith((path + ".", path + "["))]  # named by what holds them
        dropped.append(f"{path}: {why}")
        work = _without(work, steps)


def _path(steps: list[tuple[str | None, str | None]]) -> str:
    """A dotted path (``coding[0].code``) of msgspec's steps."""
    return "".join(f".{name}" if name is not None else f"[{index}]" for name, index in steps).removeprefix(".")


def as_concept(value: Any) -> CodeableConcept | None:
    """A CodeableConcept read from plain JSON (an extension's value, an interpretation), without
    what is malformed in it; None when it is not an object."""
    if isinstance(value, CodeableConcept) or value is None:
        return value
    if not isinstance(value, dict):
        return None
    return read_as(value, CodeableConcept)[0]
