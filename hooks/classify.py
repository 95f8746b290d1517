"""Classify a CodeableConcept into value sets: codes first (one dict hit per
coding), ATC is-a classes next, the name in text/display last."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .fhir_model import CodeableConcept
from .fhir_read import cc_text
from .memo import remember

if TYPE_CHECKING:
    from .knowledge import Knowledge, ValueSet

CACHE_MAX = 50_000  # distinct coding sets or texts per value-set family


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
        self._cache: dict[Any, tuple[Match, ...]] = {}
        # verdicts for a single coding, by system then code: no key tuples to build
        self._single: dict[Any, dict[Any, tuple[Match, ...]]] = {}

    def all(self, cc: CodeableConcept | None) -> tuple[Match, ...]:
        """Every value set of the family that the concept belongs to."""
        # Charts repeat the same codes and names thousands of times: each verdict is
        # remembered per distinct coding set (a code means the same thing every time)
        # or, for text-only concepts, per distinct text. One coding is the common case.
        if cc is None:
            return ()
        coding = cc.coding
        if not coding:
            key, codes = cc.text, ()
        else:
            if len(coding) == 1:
                system, code = coding[0].system, coding[0].code
                by_code = self._single.get(system)
                if by_code is not None:
                    hits = by_code.get(code)
                    if hits is not None:
                        return hits
                codes = ((system, code),) if system and code else ()
            else:
                codes = tuple((c.system, c.code) for c in coding if c.system and c.code)
            key = codes or cc_text(cc)
        if not key:
            return ()
        hits = self._cache.get(key)
        if hits is None:
            found = self._by_code(codes) or self._by_text(cc_text(cc))
            if len(self._cache) >= CACHE_MAX:
                self._single.clear()
            hits = remember(self._cache, key, tuple(Match(vid, by) for vid, by in found), CACHE_MAX)
        if len(codes) == 1:
            self._single.setdefault(codes[0][0], {})[codes[0][1]] = hits
        return hits

    def _by_code(self, codes: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        found: dict[str, None] = {}
        for system, code in codes:
            for vid in self._index.get((system, code), ()):
                if vid in self._ids:
                    found[vid] = None
            for vs in self._isa:
                if vs.match_code(system, code):
                    found[vs.id] = None
        return tuple((vid, "code") for vid in found)

    def _by_text(self, text: str) -> tuple[tuple[str, str], ...]:
        if not text or self._any_text is None or not self._any_text.search(text.lower()):
            return ()
        return tuple((vs.id, "text") for vs in self._sets if vs.match_text(text))

    def first(self, cc: CodeableConcept | None) -> Match | None:
        hits = self.all(cc)
        return hits[0] if hits else None
