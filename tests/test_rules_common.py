"""Shared by the per-module rule tests (state in, card out), and the tests of
what every rule shares: texts filled from thresholds, and the patient-view card
budget (also-due)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from cds_service.cards import Card, Coding, Source, Suggestion
from hooks.knowledge import load
from hooks.rules import run_rules
from hooks.rules.common import RuleContext, fill
from hooks.rules.registry import REGISTRY

from .conftest import chart_state

_spec = importlib.util.spec_from_file_location("build_scenarios", Path(__file__).resolve().parent.parent / "fixtures"
                                               / "build_scenarios.py")
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


def context(chart: list[dict], drafts: list[dict] = (), hook: str = "order-select") -> RuleContext:
    state = chart_state(fx.patient(), *chart, drafts=list(drafts))
    return RuleContext(state=state, hook=hook, drafts=state.drafts, draft_procedures=state.draft_procedures)


def evaluate(rule_id: str, chart: list[dict], drafts: list[dict] = (), hook: str = "order-select") -> Card | None:
    """One rule over one chart: the state in, the card (or None) out."""
    ctx = context(chart, drafts, hook)
    ctx.rule_id = rule_id
    return REGISTRY[rule_id].fn(ctx)


def text(card: Card) -> str:
    return " ".join([card.summary, card.detail or ""] + [s.label for s in card.suggestions])


def actions(card: Card) -> list[str]:
    return [a.type for s in card.suggestions for a in s.actions]


# ------------------------------------------------------------------ texts
def test_fill_takes_thresholds_by_name_and_lab_windows():
    ctx = context(fx.base())
    k = load()
    assert fill(ctx, "{rituximab_mg_per_m2:g} mg/m2") == f"{k.threshold('rituximab_mg_per_m2'):g} mg/m2"
    assert fill(ctx, "{window_workup} days") == f"{k.threshold('lab_windows_days')['workup']} days"
    assert fill(ctx, "{name}", name="x") == "x"


def test_a_card_names_its_primary_sources_and_links_them():
    card = evaluate("rituximab-safety", fx.base(), [fx.med(fx.RITUXIMAB)])
    label = load().citations["label-rituximab"]
    assert label["text"] in card.detail
    assert [link.url for link in card.links] == [label["url"]]


# ------------------------------------------------------------------ card budget
def _info(rule_id: str, n_suggestions: int = 1) -> Card:
    suggestions = [Suggestion(label=f"Order test {i}") for i in range(n_suggestions)]
    return Card(summary=f"{rule_id} summary", indicator="info", detail=f"- finding of {rule_id}\n\n**Why:** because\n\n"
                f"*Source:* a source", source=Source(label="MG CDS", topic=Coding(code=rule_id, display=rule_id)),
                suggestions=suggestions, selectionBehavior="any" if suggestions else None)


def test_the_budget_folds_info_cards_keeping_suggestion_uuids():
    ctx = context(fx.base(), hook="patient-view")
    cards = [_info("mg-workup-incomplete", 2), _info("immunotherapy-monitoring-due", 1)]
    uuids = [s.uuid for c in cards for s in c.suggestions]
    ctx.rule_id = "also-due"
    out = REGISTRY["also-due"].fn(ctx, cards)
    assert [c.rule_id for c in out] == ["also-due"]
    folded = out[0]
    assert [s.uuid for s in folded.suggestions] == uuids
    assert [s.label for s in folded.suggestions][-1] == "Order test 0 (from immunotherapy-monitoring-due)"
    assert "finding of mg-workup-incomplete" in folded.detail and "finding of immunotherapy-monitoring-due" in folded.detail
    assert folded.selectionBehavior == "any" and len(folded.summary) < 140


def test_one_info_card_is_not_folded_and_order_hooks_never_fold():
    ctx = context(fx.base(), hook="patient-view")
    ctx.rule_id = "also-due"
    one = [_info("mg-workup-incomplete")]
    assert REGISTRY["also-due"].fn(ctx, one) == one
    order_ctx = context(fx.base(), [fx.med(fx.RITUXIMAB, dose=fx.dosage(500, "mg", period=14, count=2))])
    rules = {r: REGISTRY[r].fn for r in ("rituximab-safety", "rituximab-dose-check", "rituximab-screening-incomplete")}
    assert "also-due" not in [c.rule_id for c in run_rules(order_ctx, rules)]
