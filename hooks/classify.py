"""Classify a CodeableConcept into value sets: codes first (one dict hit per
coding), ATC is-a classes next, the name in text/display last."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from .fhir_read import cc_text, codings
from .knowledge import Knowledge, ValueSet


@dataclass(frozen=True)
class Match:
    valueset: str
    by: str  # "code" | "text"


class Classifier:
    """Matches against a fixed family of value sets (e.g. all lab concepts)."""

    def __init__(self, knowledge: Knowledge, ids: Sequence[str]):
        self._sets: list[ValueSet] = [knowledge.vs(i) for i in ids]
        self._ids = set(ids)
        self._index = knowledge.code_index
        self._isa = [vs for vs in self._sets if vs.isa]
        texts = [vs.text.pattern for vs in self._sets if vs.text is not None]
        self._any_text = re.compile("|".join(texts)) if texts else None
        # Charts repeat the same few names thousands of times: remember each verdict.
        self._text_cache: dict[str, tuple[str, ...]] = {}

    def all(self, cc: Any) -> list[Match]:
        """Every value set of the family that the concept belongs to."""
        found: dict[str, Match] = {}
        for system, code, _ in codings(cc):
            if not system or not code:
                continue
            for vid in self._index.get((system, code), ()):
                if vid in self._ids:
                    found.setdefault(vid, Match(vid, "code"))
            for vs in self._isa:
                if vs.id not in found and vs.match_code(system, code):
                    found[vs.id] = Match(vs.id, "code")
        if found:
            return list(found.values())
        text = cc_text(cc)
        if not text:
            return []
        hits = self._text_cache.get(text)
        if hits is None:
            if self._any_text is None or not self._any_text.search(text.lower()):
                hits = ()
            else:
                hits = tuple(vs.id for vs in self._sets if vs.match_text(text))
            if len(self._text_cache) > 20000:
                self._text_cache.clear()
            self._text_cache[text] = hits
        return [Match(vid, "text") for vid in hits]

    def first(self, cc: Any) -> Match | None:
        matches = self.all(cc)
        return matches[0] if matches else None
