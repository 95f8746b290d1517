"""The rule registry. Each rule is declared once, in its module, with the
``@rule`` decorator: its stable id (``source.topic.code`` on its cards), the
hooks it runs on, and the knowledge it reads (thresholds, value sets). Its
docstring says in clinical language when it fires and what it advises
(``When ... Then ...``). The hook rule lists and the ``mg-cds rules``
catalogue are derived from here; tests/test_registry.py checks the registry
against rules.json, citations.json, thresholds.json and the value sets."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

ORDER = ("order-select", "order-sign")
PATIENT = ("patient-view",)
BOTH = ORDER + PATIENT


@dataclass(frozen=True)
class RuleSpec:
    id: str
    fn: Callable
    hooks: tuple[str, ...]
    thresholds: tuple[str, ...]
    valuesets: tuple[str, ...]
    fold: bool = False  # the patient-view card budget's fold (also-due): run over the other cards

    @property
    def doc(self) -> str:
        return " ".join((self.fn.__doc__ or "").split())


REGISTRY: dict[str, RuleSpec] = {}


def rule(rule_id: str, *, hooks: tuple[str, ...], thresholds: tuple[str, ...] = (),
         valuesets: tuple[str, ...] = (), fold: bool = False) -> Callable[[Callable], Callable]:
    """Register a rule function under its id (once: a second declaration is an error)."""
    def register(fn: Callable) -> Callable:
        if rule_id in REGISTRY:
            raise ValueError(f"rule {rule_id} declared twice")
        REGISTRY[rule_id] = RuleSpec(rule_id, fn, tuple(hooks), tuple(thresholds), tuple(valuesets), fold)
        fn.rule_id = rule_id  # type: ignore[attr-defined]
        return fn
    return register


def rules_for(hook: str) -> dict[str, Callable]:
    """Rule id -> function for one hook, in declaration order (the fold excluded)."""
    return {s.id: s.fn for s in REGISTRY.values() if hook in s.hooks and not s.fold}
