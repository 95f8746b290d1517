"""The rules each hook runs, derived from the registry (``registry.rule``): every
rule module declares its rules once. ``run_rules`` runs them, one card per rule,
and applies the patient-view card budget (``budget``)."""
from __future__ import annotations

import logging

from cds_service.cards import Card
from cds_service.logs import log

from . import drugs, ici, ivig, management, monitoring, rituximab  # noqa: F401  (each registers its rules)
from .budget import fold_info
from .common import Rule, RuleContext
from .registry import ORDER, PATIENT, REGISTRY, rules_for

ORDER_RULES: dict[str, Rule] = rules_for(ORDER[0])
PATIENT_RULES: dict[str, Rule] = rules_for(PATIENT[0])
SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def run_rules(ctx: RuleContext, rules: dict[str, Rule]) -> list[Card]:
    """Every rule once; a rule that fails is logged and skipped, never fatal. patient-view keeps
    every critical and warning card and folds the info cards into one (``also-due``)."""
    cards = []
    for rule_id, fn in rules.items():
        ctx.rule_id = rule_id
        try:
            result = fn(ctx)
        except Exception as exc:  # a broken rule must not take the other cards down
            log(logging.ERROR, "rule_failed", rule=rule_id, error=type(exc).__name__)
            continue
        if result is not None:
            cards.append(result)
    ctx.rule_id = None
    cards.sort(key=lambda c: SEVERITY[c.indicator])
    if ctx.hook == "patient-view":
        ctx.rule_id = "also-due"
        cards = fold_info(ctx, cards)
        ctx.rule_id = None
    return cards


def catalogue() -> list[dict[str, str]]:
    """One row per rule for ``mg-cds rules``: id, hooks, indicator, display, citations, when/then."""
    from ..knowledge import load
    meta = load().rules["rules"]
    return [{"id": s.id, "hooks": ", ".join(s.hooks), "display": meta[s.id]["display"],
             "indicator": meta[s.id].get("indicator", "by finding"), "citations": ", ".join(meta[s.id]["citations"]),
             "when": s.doc} for s in REGISTRY.values()]
