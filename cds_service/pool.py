"""All prefetched and fetched resources pooled by resourceType, whatever key
they arrived under. Unpacking touches every resource of a chart, so it only
groups them: duplicates (same type and id) are for the reader to drop among
the few resources it keeps (hooks.builder), and the reference index is built
on the first ``resolve``."""
from __future__ import annotations

import copy
from collections import Counter
from typing import Any, Iterable, Iterator

from .decode import TypedBundle


class ResourcePool:
    def __init__(self) -> None:
        self._by_type: dict[str, list[dict]] = {}
        self._by_ref: dict[tuple[str, str], dict] | None = None
        self._ignored: list[str] = []
        self._pending: list[tuple[str, Any]] = []  # prefetch values not unpacked until first read
        self._typed: list[TypedBundle] = []
        self._plain: set[str] = set()  # the types some resource of which arrived as plain JSON

    @property
    def ignored(self) -> list[str]:
        self._unpack()
        return self._ignored

    def add(self, value: Any, where: str = "prefetch") -> None:
        """Add a resource or every resource of a Bundle, in document order. Nested Bundles are
        unpacked with a stack of entry iterators, not recursion: a hostile nesting depth
        cannot exhaust it. This loop sees every resource of a chart, so it stays minimal."""
        self._by_ref = None  # rebuilt on the next resolve
        if isinstance(value, TypedBundle):  # decoded typed: the entries are structs, mostly of one type
            self._typed.append(value)
            rtype, kept = None, []
            for entry in value.entry or ():
                resource = entry.resource
                if resource is not None:
                    if resource.resourceType != rtype:
                        rtype = resource.resourceType
                        kept = self._by_type.setdefault(rtype, [])
                    kept.append(resource)
            return
        entries = self._bundle_entries(value, where)
        stack = [(enumerate(entries), where)] if entries else []
        by_type = self._by_type
        while stack:
            items, label = stack.pop()
            for i, entry in items:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if resource is None:
                    continue
                rtype = resource.get("resourceType") if isinstance(resource, dict) else None
                if rtype == "Bundle" or not isinstance(rtype, str):
                    sub = self._bundle_entries(resource, f"{label}.entry[{i}]")
                    if sub:
                        stack.append((items, label))
                        stack.append((enumerate(sub), f"{label}.entry[{i}]"))
                        break
                    continue
                kept = by_type.get(rtype)
                if kept is None:
                    by_type[rtype] = [resource]
                    self._plain.add(rtype)
                else:
                    kept.append(resource)
                    self._plain.add(rtype)

    def _bundle_entries(self, value: Any, where: str) -> list | None:
        """A Bundle's entries; any other resource is kept (None returned); non-resources are noted."""
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
            self._ignored.append(f"{where} is not a FHIR resource and was ignored")
            return None
        if value["resourceType"] != "Bundle":
            self._by_type.setdefault(value["resourceType"], []).append(value)
            self._plain.add(value["resourceType"])
            return None
        entries = value.get("entry") or []
        if not isinstance(entries, list):
            self._ignored.append(f"{where}.entry is not an array and was ignored")
            return None
        return entries

    def add_all(self, values: Iterable[tuple[str, Any]]) -> None:
        """Queue prefetch values; they are unpacked when first read (a quiet answer never reads them)."""
        self._pending.extend(values)

    def _unpack(self) -> None:
        while self._pending:
            key, value = self._pending.pop(0)
            self.add(value, f"prefetch.{key}")

    def of_type(self, *types: str) -> Iterator[Any]:
        """Plain-JSON dicts, and structs for what was decoded typed (cds_service.decode)."""
        self._unpack()
        for rtype in types:
            yield from self._by_type.get(rtype, ())

    def all_typed(self, rtype: str) -> bool:
        """Whether every pooled resource of this type was decoded typed (none is plain JSON)."""
        self._unpack()
        return rtype not in self._plain

    def original(self, resource: Any) -> dict | None:
        """A fresh, mutable copy of a pooled resource as the EHR sent it: one decoded typed is
        parsed again from the request body. None when it is not pooled here."""
        if isinstance(resource, dict):
            return copy.deepcopy(resource)
        self._unpack()
        for bundle in self._typed:
            plain = bundle.original(resource)
            if plain is not None:
                return copy.deepcopy(plain)
        return None

    def resolve(self, reference: str) -> Any:
        """The first resource with this "Type/id" reference."""
        self._unpack()
        if self._by_ref is None:
            by_ref: dict[tuple[str, str], Any] = {}
            for rtype, resources in self._by_type.items():
                for resource in resources:
                    # a search's OperationOutcome (Epic's "no results") has no id, typed or not
                    rid = resource.get("id") if isinstance(resource, dict) else getattr(resource, "id", None)
                    if isinstance(rid, str):
                        by_ref.setdefault((rtype, rid), resource)
            self._by_ref = by_ref
        if not isinstance(reference, str):
            return None
        rtype, _, rid = reference.partition("/")
        return self._by_ref.get((rtype, rid))


def field_of(obj: Any, name: str) -> Any:
    """An element of a plain-JSON object or a decoded struct; None when absent."""
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def resources_in(value: Any) -> Iterator[Any]:
    """Every resource of a prefetch value (plain JSON or decoded typed), Bundles unpacked,
    nested ones too (with a stack: a hostile nesting depth cannot exhaust it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        rtype = field_of(item, "resourceType") if item is not None else None
        if rtype == "Bundle":
            entries = field_of(item, "entry")
            if isinstance(entries, list):
                stack.extend(r for r in reversed([field_of(e, "resource") for e in entries if e is not None])
                             if r is not None)
        elif isinstance(rtype, str):
            yield item


def types_in(value: Any) -> set[str]:
    """The resource types of a prefetch value, without counting: a Bundle decoded typed can hold
    only its models' types (when it has entries); a plain one is read entry by entry."""
    if isinstance(value, TypedBundle):
        return set(type(value).resource_types) if value.entry else set()  # type: ignore[attr-defined]
    if not isinstance(value, dict):
        return set()
    rtype = value.get("resourceType")
    if rtype != "Bundle":
        return {rtype} if isinstance(rtype, str) else set()
    entries = value.get("entry")
    if not isinstance(entries, list):
        return set()
    found = {t for t in (r.get("resourceType") for r in (e.get("resource") for e in entries if isinstance(e, dict))
                         if isinstance(r, dict)) if isinstance(t, str)}
    if "Bundle" in found:  # nested Bundles (rare): every resource
        found = {field_of(r, "resourceType") for r in resources_in(value)}
    return found


def key_contents(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Prefetch key -> resource type -> how many arrived under it (for ``explain``)."""
    return {key: dict(Counter(field_of(r, "resourceType") for r in resources_in(value)))
            for key, value in data.items() if value is not None}
