"""Typed FHIR R4 shapes for the resources a chart holds most of (Observations,
Conditions, MedicationRequests and the Medications they reference), limited to the
elements the rules read.

Why: a chart is mostly Observations, and parsing them into dicts is most of the
cost of a request. Decoding them straight into these structs (msgspec) skips every
element no rule reads - category, performer, narrative, identifiers - and builds
small slot objects instead of dicts. The service decodes its prefetch with them
(``PREFETCH_MODELS`` in ``hooks.services``); a request they do not fit is parsed as
plain JSON and the builder converts each Observation and Condition on its own, so a
malformed one is skipped with a note instead of failing the request (a plain-JSON
MedicationRequest is read as it is). Either way a chart resource is validated as its
``projection``: the same elements, so typed and plain JSON give the same verdicts.

Leaf values are ``Any``: the readers already judge a code, a unit or a date that is
not a string, as they do for plain JSON. Only the containers are typed."""
from __future__ import annotations

from typing import Any, ClassVar, Optional

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


class Condition(Resource, tag="Condition", **_OPTIONS):
    resourceType: ClassVar[str] = "Condition"
    clinicalStatus: Optional[CodeableConcept] = None
    verificationStatus: Optional[CodeableConcept] = None
    severity: Optional[CodeableConcept] = None
    onsetDateTime: Any = None
    onsetPeriod: Any = None
    recordedDate: Any = None
    extension: Any = None  # condition-dueTo: a dysphagia attributed to another cause


class TimingRepeat(msgspec.Struct, **_OPTIONS):
    boundsPeriod: Any = None
    boundsDuration: Any = None  # a course's length (IVIG over 5 days): rare, decoded only when present


class Timing(msgspec.Struct, **_OPTIONS):
    """Only the boundsPeriod is read (it dates the order): typed, so the rest of a timing is skipped."""
    repeat: Optional[TimingRepeat] = None


class Dosage(msgspec.Struct, **_OPTIONS):
    """What is read of a chart medication's dosage: the route (immune globulin IV or SC;
    ophthalmic, otic, topical) and the timing (its boundsPeriod dates the order). Doses are read
    only from drafted orders, which stay plain JSON."""
    text: Any = None
    route: Optional[CodeableConcept] = None
    timing: Optional[Timing] = None


class MedicationRequest(Resource, tag="MedicationRequest", **_OPTIONS):
    """A prescription of the chart. Card suggestions that update it start from the resource as
    the EHR sent it (``ResourcePool.original``), never from this projection."""
    resourceType: ClassVar[str] = "MedicationRequest"
    intent: Any = None
    medicationCodeableConcept: Optional[CodeableConcept] = None
    medicationReference: Optional[Reference] = None
    contained: Any = None
    authoredOn: Any = None
    dosageInstruction: Optional[list[Dosage]] = None


class Medication(Resource, tag="Medication", **_OPTIONS):
    """A Medication a search ``_include``d for medicationReference: its code is read."""
    resourceType: ClassVar[str] = "Medication"


MODELS: dict[str, type[Resource]] = {m.resourceType: m for m in (Observation, Condition, MedicationRequest)}
FHIRObject = (dict, msgspec.Struct)  # what a reader accepts where plain JSON has an object


def projection(resource: Any) -> Any:
    """What validating a chart resource covers: for a modelled type, the elements its model holds
    (those the rules read) as plain JSON, whether it was decoded typed or arrived as plain JSON, so
    that both give one verdict; any other resource as it is. msgspec.ValidationError when an
    element the model holds is malformed."""
    if isinstance(resource, dict):
        rtype = resource.get("resourceType")
        model = MODELS.get(rtype) if isinstance(rtype, str) else None
        if model is None:
            return resource
        resource = msgspec.convert(resource, model)
    return msgspec.to_builtins(resource) if isinstance(resource, Resource) else resource


def get(obj: Any, name: str) -> Any:
    """An element of a plain-JSON object or a struct; None when absent."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)
