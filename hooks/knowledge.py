"""Clinical knowledge loaded once per process from ``knowledge/``: FHIR
ValueSets (codes, is-a classes, text patterns), thresholds and citations."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from .classify import Classifier

HERE = Path(__file__).parent / "knowledge"
EXT = "urn:mg-cds:"


@dataclass
class ValueSet:
    id: str
    title: str
    codes: dict[tuple[str, str], str] = field(default_factory=dict)  # (system, code) -> display
    isa: list[tuple[str, str]] = field(default_factory=list)         # (system, code prefix)
    text: re.Pattern | None = None
    exclude: re.Pattern | None = None
    options: dict[str, str] = field(default_factory=dict)            # e.g. unit, kind, requires-route

    def match_code(self, system: str | None, code: str | None) -> bool:
        if not system or not code:
            return False
        if (system, code) in self.codes:
            return True
        return any(system == s and code.startswith(prefix) for s, prefix in self.isa)

    def match_text(self, text: str | None) -> bool:
        if not text or self.text is None:
            return False
        low = text.lower()
        return bool(self.text.search(low)) and not (self.exclude and self.exclude.search(low))

    def first_code(self, system: str) -> tuple[str, str] | None:
        return next(((c, d) for (s, c), d in self.codes.items() if s == system), None)


def _words(patterns: Iterable[str]) -> re.Pattern | None:
    pats = [f"(?<![a-z0-9])(?:{p})(?![a-z0-9])" for p in patterns]
    return re.compile("|".join(pats)) if pats else None


def _parse_valueset(res: dict[str, Any]) -> ValueSet:
    vs = ValueSet(id=res["id"], title=res.get("title", res["id"]))
    for inc in res.get("compose", {}).get("include", []):
        system = inc["system"]
        for concept in inc.get("concept", []):
            vs.codes[(system, concept["code"])] = concept.get("display", concept["code"])
        for flt in inc.get("filter", []):
            if flt.get("op") == "is-a":
                vs.isa.append((system, flt["value"]))
    texts, excludes = [], []
    for ext in res.get("extension", []):
        name = ext["url"][len(EXT):] if ext["url"].startswith(EXT) else ext["url"]
        if name == "text-match":
            texts.append(ext["valueString"])
        elif name == "text-exclude":
            excludes.append(ext["valueString"])
        else:
            vs.options[name] = ext["valueString"]
    vs.text, vs.exclude = _words(texts), _words(excludes)
    return vs


@dataclass
class Knowledge:
    valuesets: dict[str, ValueSet]
    thresholds: dict[str, Any]
    citations: dict[str, dict[str, str]]
    rules: dict[str, dict[str, Any]]
    # (system, code) -> ids of value sets listing it, for one dict hit per coding
    code_index: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    _classifiers: dict[tuple[str, ...], Classifier] = field(default_factory=dict, repr=False)

    def classifier(self, ids: tuple[str, ...]) -> Classifier:
        """One Classifier per family of value sets per process, so its name cache persists."""
        if ids not in self._classifiers:
            self._classifiers[ids] = Classifier(self, ids)
        return self._classifiers[ids]

    def vs(self, vid: str) -> ValueSet:
        return self.valuesets[vid]

    def threshold(self, name: str) -> Any:
        return self.thresholds[name]["value"]


@lru_cache(maxsize=1)
def load() -> Knowledge:
    valuesets = {}
    for path in sorted((HERE / "valuesets").glob("*.json")):
        vs = _parse_valueset(json.loads(path.read_text(encoding="utf-8")))
        valuesets[vs.id] = vs
    index: dict[tuple[str, str], list[str]] = {}
    for vs in valuesets.values():
        for key in vs.codes:
            index.setdefault(key, []).append(vs.id)

    def read(name: str) -> dict:
        return json.loads((HERE / name).read_text(encoding="utf-8"))
    return Knowledge(valuesets=valuesets, thresholds=read("thresholds.json"), citations=read("citations.json"),
                     rules=read("rules.json"), code_index={k: tuple(v) for k, v in index.items()})
