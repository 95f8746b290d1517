"""The one place plain JSON becomes the structs the readers read (``hooks.fhir_model``).

A chart arrives partly typed (the prefetch keys the service decodes so) and partly
as plain JSON (the other keys, a request the typed decoder did not fit, Bundles
fetched from the FHIR server, the draft orders, the Medications sent beside them).
``TypedResources`` wraps the pool: every resource it hands out is a struct,
converted on first read, resource by resource. A resource that cannot be read is a
data-quality note on that resource, never a failed request (``fhir_model.read_as``).
The JSON each converted resource was sent as is kept: it is what is validated
(``validated``) and what a suggestion that updates the resource starts from
(``original``); a resource decoded typed is had again from the request body."""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Iterator

import msgspec

from .fhir_model import MODELS, PROJECTED, STRICT, Coded, Medication, projection, read_as


class TypedResources:
    """The pool (``hooks.state.Resources``) as structs. ``notes`` receives one data-quality note
    per resource read without a malformed element, or skipped."""

    def __init__(self, pool: Any, notes: list[str]):
        self._pool = pool
        self.notes = notes
        self._structs: dict[int, tuple[dict, Any]] = {}  # id(plain JSON) -> (it, its struct or None)
        self._sent: dict[int, dict] = {}                  # id(struct) -> the JSON it was read from
        self._read_notes: dict[int, str] = {}             # id(struct) -> its note on what it was read without

    def of_type(self, rtype: str) -> Iterable[Any]:
        """The pooled resources of one type, each a struct of its model (in pool order); those
        that cannot be read are left out, each with a note. Converted one at a time as they are
        read, so that a struct no reader keeps is freed at once: holding a chart's worth of them
        costs more (allocation, garbage collection) than converting them."""
        resources = self._pool.of_type(rtype)
        if self._pool.all_typed(rtype):  # decoded typed: handed on as they are, no per-resource step
            return resources
        return self._converted(resources, self._whole if rtype in STRICT else self.typed)

    @staticmethod
    def _converted(resources: Iterable[Any], convert: Callable[[dict], Any]) -> Iterator[Any]:
        for resource in resources:
            if type(resource) is dict:
                resource = convert(resource)
                if resource is None:
                    continue
            yield resource

    def _whole(self, resource: dict, where: str = "") -> Any:
        """An Observation or Condition, converted as a typed request decodes it: whole, or not at
        all (None, with a note). The bulk of a plain-JSON chart: nothing is kept about it (what it
        validates as is its struct's elements: ``projection`` of the JSON would give the same), except that
        one could not be read, so that it is noted once."""
        if id(resource) in self._structs:  # one that could not be read, reached again (a reference to it)
            return None
        try:
            return msgspec.convert(resource, MODELS[resource["resourceType"]])
        except msgspec.ValidationError:
            self.notes.append(f"{where}{resource['resourceType']}/{resource.get('id') or '?'} could not be read "
                              "(ValidationError); skipped")
            self._structs[id(resource)] = (resource, None)  # noted once; holds it, so that its id is not reused
            return None

    def typed(self, resource: dict, where: str = "") -> Any:
        """The struct of a plain-JSON resource (its type's model; ``Coded`` for a type not
        modelled); None when it is an Observation or Condition that cannot be read (``_whole``)."""
        rtype = resource.get("resourceType")
        if isinstance(rtype, str) and rtype in STRICT:
            return self._whole(resource, where)
        return self._read(resource, where)

    def _read(self, resource: dict, where: str) -> Any:
        """The struct of a plain-JSON resource, read without its malformed elements (each in one
        note). Converted once: the same dict gives the same struct."""
        seen = self._structs.get(id(resource))
        if seen is not None:
            return seen[1]
        rtype = resource.get("resourceType")
        rtype = rtype if isinstance(rtype, str) else None
        model = MODELS.get(rtype, Coded) if rtype is not None else Coded
        try:
            struct, problems = msgspec.convert(resource, model), None
        except msgspec.ValidationError:
            struct, problems = read_as(resource, model)
        if problems:
            why = "; ".join(problems)
            self.notes.append(f"{where}{rtype}/{resource.get('id') or '?'}: {why[:200]}: "
                              f"read without {'it' if len(problems) == 1 else 'them'}")
            self._read_notes[id(struct)] = self.notes[-1]
        self._structs[id(resource)] = (resource, struct)  # holds both: neither id can be reused meanwhile
        self._sent[id(struct)] = resource
        return struct

    def drafts(self, drafts: Iterable[Any]) -> list[Any]:
        """The draft orders (plain JSON, as context.draftOrders holds them) as structs; a draft of a
        type not modelled is not read, one with malformed elements is read without them (of any
        type: a draft is never dropped)."""
        return [self._read(d, "draft ") for d in drafts
                if isinstance(d, dict) and isinstance(d.get("resourceType"), str) and d["resourceType"] in MODELS]

    def resolve(self, reference: str) -> Any:
        """The struct of the first pooled resource with this "Type/id" reference, or None."""
        found = self._pool.resolve(reference)
        return self.typed(found) if type(found) is dict else found

    def contained(self, resource: Any, ref: str) -> Medication | None:
        """The Medication contained in ``resource`` under ``#id`` (``ref`` without the '#')."""
        for item in resource.contained if isinstance(resource.contained, list) else ():
            if isinstance(item, dict) and item.get("id") == ref:  # read for its code whatever its type
                struct, problems = read_as(dict(item, resourceType="Medication"), Medication)
                if problems:
                    self.notes.append(f"contained #{ref} of {resource.resourceType}/{resource.id or '?'}: "
                                      f"{'; '.join(problems)[:200]}")
                return struct
        return None

    def withdraw_note(self, resource: Any) -> None:
        """Take back the note on what a struct was read without: it is skipped as not valid FHIR R4,
        and that note (``PatientState.checked``) is the one on it."""
        note = self._read_notes.pop(id(resource), None)
        if note is not None and note in self.notes:
            self.notes.remove(note)

    def sent(self, resource: Any) -> Any:
        """The JSON a struct was read from (not a copy: read it, do not change it); for one decoded
        typed, its JSON parsed again from the request body; None when not known here."""
        seen = self._sent.get(id(resource))
        return seen if seen is not None else self._pool.original(resource)

    def original(self, resource: Any) -> dict | None:
        """A fresh, mutable copy of the resource as the EHR sent it, for a suggestion that updates it."""
        seen = self._sent.get(id(resource))
        return copy.deepcopy(seen) if seen is not None else self._pool.original(resource)

    def validated(self, resource: Any) -> Any:
        """What validating a resource covers (``fhir_model.projection``): a struct decoded typed (of a
        projected type) in its elements; one read from plain JSON as that JSON was sent, so that a
        malformed element the reader left out still makes the resource invalid."""
        seen = self._sent.get(id(resource))
        if seen is not None:
            return projection(seen)
        sent = None if type(resource).__name__ in PROJECTED else self._pool.original(resource)
        return sent if sent is not None else msgspec.to_builtins(resource)
