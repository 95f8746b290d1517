"""The rule registry: which rules each hook runs, in card order. Each rule is
a small function RuleContext -> Card | None, keyed by its stable rule id."""
from __future__ import annotations

import logging

from cds_service.cards import Card
from cds_service.logs import log

from .common import Rule, RuleContext
from .drugs import (dose_weight_missing, ici_contraindicated, ici_discontinue, mg_exacerbating_drug,
                    pyridostigmine_dose_check)
from .ivig import ivig_dose_check, ivig_iga_deficient, ivig_iga_unknown, plex_after_ivig
from .management import mg_moderate_management, mg_severe_management, rituximab_consider
from .monitoring import immunotherapy_monitoring_due, mg_workup_incomplete, myocarditis_check
from .rituximab import (rituximab_dose_check, rituximab_hbv_positive, rituximab_hcv_positive, rituximab_safety,
                        rituximab_screening_incomplete, rituximab_tb_positive)

ORDER_RULES: dict[str, Rule] = {
    "ici-contraindicated": ici_contraindicated,
    "mg-exacerbating-drug": mg_exacerbating_drug,
    "ivig-iga-deficient": ivig_iga_deficient,
    "ivig-iga-unknown": ivig_iga_unknown,
    "ivig-dose-check": ivig_dose_check,
    "plex-after-ivig": plex_after_ivig,
    "rituximab-hbv-positive": rituximab_hbv_positive,
    "rituximab-tb-positive": rituximab_tb_positive,
    "rituximab-hcv-positive": rituximab_hcv_positive,
    "rituximab-screening-incomplete": rituximab_screening_incomplete,
    "rituximab-dose-check": rituximab_dose_check,
    "rituximab-safety": rituximab_safety,
    "pyridostigmine-dose-check": pyridostigmine_dose_check,
    "dose-weight-missing": dose_weight_missing,
}
PATIENT_RULES: dict[str, Rule] = {
    "mg-severe-management": mg_severe_management,
    "mg-moderate-management": mg_moderate_management,
    "ici-discontinue": ici_discontinue,
    "myocarditis-check": myocarditis_check,
    "mg-exacerbating-drug": mg_exacerbating_drug,
    "rituximab-consider": rituximab_consider,
    "mg-workup-incomplete": mg_workup_incomplete,
    "immunotherapy-monitoring-due": immunotherapy_monitoring_due,
}
SEVERITY = {"critical": 0, "warning": 1, "info": 2}


def run_rules(ctx: RuleContext, rules: dict[str, Rule]) -> list[Card]:
    """Every rule once; a rule that fails is logged and skipped, never fatal."""
    cards = []
    for rule_id, rule in rules.items():
        try:
            result = rule(ctx)
        except Exception as exc:  # a broken rule must not take the other cards down
            log(logging.ERROR, "rule_failed", rule=rule_id, error=type(exc).__name__)
            continue
        if result is not None:
            cards.append(result)
    cards.sort(key=lambda c: SEVERITY[c.indicator])
    return cards


def catalogue() -> list[dict[str, str]]:
    from ..knowledge import load
    meta = load().rules["rules"]
    out = []
    for hooks, rules in (("order-select, order-sign", ORDER_RULES), ("patient-view", PATIENT_RULES)):
        for rule_id in rules:
            out.append({"id": rule_id, "hooks": hooks, "display": meta[rule_id]["display"],
                        "indicator": meta[rule_id].get("indicator", "by grade"),
                        "citations": ", ".join(meta[rule_id]["citations"])})
    return out
