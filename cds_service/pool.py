"""All prefetched and fetched resources pooled by resourceType, whatever key
they arrived under, with duplicates (same type and id) kept once."""
from __future__ import annotations

from typing import Any, Iterable, Iterator


class ResourcePool:
    def __init__(self) -> None:
        self._by_type: dict[str, list[dict]] = {}
        self._by_ref: dict[str, dict] = {}
        self._ignored: list[str] = []
        self._pending: list[tuple[str, Any]] = []  # prefetch values not unpacked until first read

    @property
    def ignored(self) -> list[str]:
        self._unpack()
        return self._ignored

    def add(self, value: Any, where: str = "prefetch") -> None:
        """Add a resource or every resource of a Bundle (nested Bundles too, iteratively:
        a hostile nesting depth cannot exhaust the stack)."""
        stack = [(value, where)]
        while stack:
            value, where = stack.pop()
            if value is None:
                continue
            if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
                self._ignored.append(f"{where} is not a FHIR resource and was ignored")
                continue
            if value["resourceType"] == "Bundle":
                entries = value.get("entry") or []
                if not isinstance(entries, list):
                    self._ignored.append(f"{where}.entry is not an array and was ignored")
                    continue
                stack.extend((e.get("resource"), f"{where}.entry[{i}]")
                             for i, e in reversed(list(enumerate(entries))) if isinstance(e, dict))
                continue
            rtype, rid = value["resourceType"], value.get("id")
            if isinstance(rid, str):
                ref = f"{rtype}/{rid}"
                if ref in self._by_ref:
                    continue
                self._by_ref[ref] = value
            self._by_type.setdefault(rtype, []).append(value)

    def add_all(self, values: Iterable[tuple[str, Any]]) -> None:
        """Queue prefetch values; they are unpacked when first read (a quiet answer never reads them)."""
        self._pending.extend(values)

    def _unpack(self) -> None:
        while self._pending:
            key, value = self._pending.pop(0)
            self.add(value, f"prefetch.{key}")

    def of_type(self, *types: str) -> Iterator[dict]:
        self._unpack()
        for rtype in types:
            yield from self._by_type.get(rtype, ())

    def resolve(self, reference: str) -> dict | None:
        self._unpack()
        return self._by_ref.get(reference)
