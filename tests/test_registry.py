"""The rule registry agrees with the knowledge files: every rule has its texts,
every text block a rule, every cited key a citation, every value set a reader,
every threshold a user, and no number is written into a card text."""
from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from hooks.knowledge import load
from hooks.rules import ORDER_RULES, PATIENT_RULES, REGISTRY
from hooks.rules.registry import BOTH, rule

HOOKS = Path(__file__).resolve().parent.parent / "hooks"
# the state builder and readers read knowledge too (not dosing.py: rules pass it their thresholds)
NON_RULE_SOURCES = [p for p in HOOKS.glob("*.py") if p.name not in ("dosing.py", "knowledge.py", "services.py")]
K = load()
TEXTS = K.rules["rules"]
FIELD = string.Formatter()
# a number followed by a unit in a text template: such numbers belong in thresholds.json
NUMBER_WITH_UNIT = re.compile(r"(?<![{\w\[])\d[\d.,]*\s*(?:-\s*\d[\d.,]*\s*)?(?:mg|g|kg|mL|µg|days?|weeks?|months?|h|hours?"
                              r"|cmH2O|%|m2)\b")


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _fields(rule_id: str) -> set[str]:
    """Threshold names the rule's texts use as format fields (``{name}``, ``{window_<concept>}``)."""
    out = set()
    for text in _strings({k: v for k, v in TEXTS[rule_id].items() if k != "citations"}):
        for _, name, _, _ in FIELD.parse(text):
            if not name:
                continue
            head = re.split(r"[.\[]", name)[0]
            if head.startswith("window_"):
                out.add("lab_windows_days." + head[len("window_"):])
            elif head in K.thresholds:
                out.add(head)
    return out


def _other_sources() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in NON_RULE_SOURCES)


def test_hook_lists_come_from_the_registry():
    assert set(ORDER_RULES) == {s.id for s in REGISTRY.values() if "order-sign" in s.hooks and not s.fold}
    assert set(PATIENT_RULES) == {s.id for s in REGISTRY.values() if "patient-view" in s.hooks and not s.fold}
    assert "mg-exacerbating-drug" in ORDER_RULES and "mg-exacerbating-drug" in PATIENT_RULES


def test_a_rule_is_declared_once():
    with pytest.raises(ValueError, match="declared twice"):
        rule("ivig-iga-unknown", hooks=BOTH)(lambda ctx: None)


@pytest.mark.parametrize("rule_id", sorted(REGISTRY))
def test_every_rule_has_texts_a_docstring_and_known_citations(rule_id):
    spec = REGISTRY[rule_id]
    assert rule_id in TEXTS, f"{rule_id} has no texts in rules.json"
    meta = TEXTS[rule_id]
    assert meta.get("display"), f"{rule_id}: no display"
    assert re.search(r"\bWhen\b.*\bthen\b", spec.doc, re.S | re.I), f"{rule_id}: docstring needs When ... then ..."
    for key, value in meta.items():
        if key.startswith("citations"):
            missing = [c for c in value if c not in K.citations]
            assert not missing, f"{rule_id}.{key} cites keys missing from citations.json: {missing}"


def test_every_text_block_has_a_rule():
    assert set(TEXTS) - set(REGISTRY) == set()


def test_every_override_reason_list_names_a_rule():
    assert set(K.rules["override_reasons"]["by_rule"]) <= set(REGISTRY)


@pytest.mark.parametrize("rule_id", sorted(REGISTRY))
def test_thresholds_and_value_sets_a_rule_declares_exist(rule_id):
    spec = REGISTRY[rule_id]
    for name in spec.thresholds:
        head, _, sub = name.partition(".")
        assert head in K.thresholds, f"{rule_id} declares unknown threshold {name}"
        if sub:
            assert sub in K.thresholds[head]["value"], f"{rule_id} declares unknown window {name}"
    for vid in spec.valuesets:
        assert vid in K.valuesets, f"{rule_id} declares unknown value set {vid}"


@pytest.mark.parametrize("rule_id", sorted(REGISTRY))
def test_a_text_uses_only_thresholds_its_rule_declares(rule_id):
    undeclared = _fields(rule_id) - set(REGISTRY[rule_id].thresholds)
    assert not undeclared, f"{rule_id}'s texts use thresholds it does not declare: {sorted(undeclared)}"


def test_no_number_is_written_into_a_card_text():
    found = [(rule_id, m.group(0)) for rule_id, meta in TEXTS.items()
             for text in _strings({k: v for k, v in meta.items() if not k.startswith("citations")})
             for m in NUMBER_WITH_UNIT.finditer(FIELD_RE.sub("", text))]
    assert not found, f"numbers with units in rules.json texts (use thresholds.json): {found}"


FIELD_RE = re.compile(r"\{[^}]*\}")


def test_every_threshold_has_a_source_and_a_user():
    declared = {n for s in REGISTRY.values() for n in s.thresholds}
    others = _other_sources()
    for name, entry in K.thresholds.items():
        if name.startswith("_"):
            continue
        assert entry.get("source"), f"threshold {name} has no source"
        if name == "lab_windows_days":  # one window per lab concept, each declared as lab_windows_days.<concept>
            unused = [w for w in entry["value"] if f"{name}.{w}" not in declared and f'"{w}"' not in others]
            assert not unused, f"lab windows no rule declares: {unused}"
        else:
            assert name in declared or f'"{name}"' in others, \
                f"threshold {name} is used by no rule and not read by the state builder"


def test_every_value_set_is_read_by_a_rule_or_the_builder():
    declared = {v for s in REGISTRY.values() for v in s.valuesets}
    others = _other_sources()
    unread = [vid for vid in K.valuesets if vid not in declared and f'"{vid}"' not in others]
    assert not unread, f"value sets no rule declares and the builder does not read: {unread}"


def test_registry_check_catches_an_undeclared_threshold_read():
    """RuleContext.t refuses a threshold the running rule did not declare (how the registry
    stays true to the code)."""
    from datetime import datetime, timezone

    from cds_service.pool import ResourcePool
    from hooks.builder import build_state
    from hooks.rules.common import RuleContext
    state = build_state(ResourcePool(), "p", datetime(2026, 11, 25, tzinfo=timezone.utc))
    ctx = RuleContext(state=state, hook="order-select", rule_id="rituximab-safety")
    with pytest.raises(KeyError, match="without declaring"):
        ctx.t("ivig_dose_tolerance")
    ctx.rule_id = "ivig-dose-check"
    assert ctx.t("ivig_dose_tolerance") == K.threshold("ivig_dose_tolerance")
