"""Rituximab order rules: pre-treatment screening, positive hepatitis and TB
screens, the dose, and the safety reminder (seed: Pre-Treatment Workup,
Rituximab Safety)."""
from __future__ import annotations

from cds_service.cards import Card

from ..dosing import ordered_dose, with_dose
from ..state import LabResult
from .common import RuleContext, card, lab_gaps_card, med_line, texts, update_resource

SCREENING = ("igg", "igm", "iga", "hbsag", "anti-hbc", "hcv-ab", "tb")


def _latest_any(ctx: RuleContext, concept: str) -> LabResult | None:
    """The latest final result at any age: a positive serology stays relevant."""
    return next((r for r in ctx.state.results(concept) if not r.pending), None)


def rituximab_screening_incomplete(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-rituximab")
    if not drafts:
        return None
    window = ctx.state.window("rituximab_screening")
    statuses = [ctx.state.lab(c, window) for c in SCREENING]
    if all(s.usable for s in statuses):
        return None
    return lab_gaps_card(ctx, "rituximab-screening-incomplete", statuses,
                         [f"Rituximab order: {med_line(d)}" for d in drafts], short="{gaps} of {total} screening tests")


def rituximab_hbv_positive(ctx: RuleContext) -> Card | None:
    if not ctx.drafts_of("drug-rituximab"):
        return None
    findings = [f"{r.name}: {r.shown()}" for r in (_latest_any(ctx, "hbsag"), _latest_any(ctx, "anti-hbc"))
                if r is not None and r.interpretation == "positive"]
    findings += [f"Hepatitis B on the problem list: {c}" for c in ctx.state.conditions.get("condition-hepatitis-b", [])]
    if not findings:
        return None
    return card(ctx, "rituximab-hbv-positive", texts(ctx.k, "rituximab-hbv-positive")["summary"], findings)


def rituximab_hcv_positive(ctx: RuleContext) -> Card | None:
    result = _latest_any(ctx, "hcv-ab") if ctx.drafts_of("drug-rituximab") else None
    if result is None or result.interpretation != "positive":
        return None
    return card(ctx, "rituximab-hcv-positive", texts(ctx.k, "rituximab-hcv-positive")["summary"],
                [f"{result.name}: {result.shown()}"])


def rituximab_tb_positive(ctx: RuleContext) -> Card | None:
    if not ctx.drafts_of("drug-rituximab"):
        return None
    status = ctx.state.lab("tb", ctx.state.window("rituximab_screening"))
    result = status.latest if status.status in ("result", "stale") else None
    if result is None:
        return None
    meta = texts(ctx.k, "rituximab-tb-positive")
    finding = [f"{result.name}: {result.shown()}"]
    if result.interpretation == "positive":
        return card(ctx, "rituximab-tb-positive", meta["summary"], finding)
    if result.interpretation == "indeterminate":
        return card(ctx, "rituximab-tb-positive", meta["summary_indeterminate"], finding, indicator="warning")
    if result.interpretation is None and status.usable:
        return card(ctx, "rituximab-tb-positive", meta["summary_unreadable"],
                    finding + ["No overall positive/negative result was found (component values only)."],
                    indicator="warning")
    return None


def _nearest_regimen(ctx: RuleContext, dose_mg: float) -> tuple[float, str, bool] | None:
    """(dose in mg, label, per-BSA?) of the regimen nearer to the ordered dose, or None if in range."""
    flat, flat_tol = float(ctx.t("rituximab_flat_mg")), float(ctx.t("rituximab_flat_tolerance"))
    if abs(dose_mg - flat) / flat <= flat_tol:
        return None
    bsa = ctx.state.body.bsa_m2
    if bsa is None:
        return flat, f"{flat:.0f} mg (day 1 and day 15)", False
    per_m2, bsa_tol = float(ctx.t("rituximab_mg_per_m2")), float(ctx.t("rituximab_bsa_tolerance"))
    by_bsa = per_m2 * bsa
    if abs(dose_mg - by_bsa) / by_bsa <= bsa_tol:
        return None
    if abs(dose_mg - by_bsa) < abs(dose_mg - flat):
        return round(by_bsa), f"{by_bsa:.0f} mg weekly x 4 (375 mg/m2 x BSA {bsa:.2f} m2)", True
    return flat, f"{flat:.0f} mg (day 1 and day 15)", False


def rituximab_dose_mg(ctx: RuleContext, resource: dict) -> tuple[float | None, str, str | None]:
    """(ordered dose in mg, as ordered, problem)."""
    dose = ordered_dose(resource, mass_target="mg")
    if dose.problem:
        return None, dose.shown, dose.problem
    if dose.dimension == "per_m2":
        bsa = ctx.state.body.bsa_m2
        return (dose.amount * bsa if bsa else None), dose.shown, None if bsa else "no BSA"
    if dose.dimension != "mass":
        return None, dose.shown, f"dose {dose.shown} is not a mass or mg/m2 dose"
    return dose.amount, dose.shown, None


def rituximab_dose_check(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-rituximab")
    if not drafts:
        return None
    meta = texts(ctx.k, "rituximab-dose-check")
    findings, suggestions, unreadable, nearest_label = [], [], [], None
    body = ctx.state.body
    if body.bsa_m2:
        findings.append(f"BSA {body.bsa_m2:.2f} m2 ({body.bsa_source}) -> 375 mg/m2 = {375 * body.bsa_m2:.0f} mg")
    for d in drafts:
        mg, shown, problem = rituximab_dose_mg(ctx, d.resource)
        if problem == "no BSA":
            continue  # dose-weight-missing
        if problem:
            unreadable.append(f"{d.name}: {problem}")
            continue
        nearest = _nearest_regimen(ctx, mg)
        if nearest is None:
            continue
        if body.bsa_m2 is None:
            continue  # only the BSA check could clear it: dose-weight-missing
        dose, nearest_label, per_bsa = nearest
        findings.append(f"Ordered {d.name}: {shown} = {mg:.0f} mg")
        if d.resource_id:
            new = with_dose(d.resource, value=dose, unit="mg", text=f"rituximab {nearest_label}",
                            frequency=1, period=1 if per_bsa else 14, period_unit="wk" if per_bsa else "d",
                            count=4 if per_bsa else 2)
            suggestions.append(update_resource(new, meta["suggestion"].format(nearest=nearest_label)))
    if nearest_label is None:
        if unreadable:
            return card(ctx, "rituximab-dose-check", meta["summary_unreadable"].format(problem="dose not interpretable"),
                        unreadable)
        return None
    return card(ctx, "rituximab-dose-check", meta["summary"].format(nearest=nearest_label), findings + unreadable,
                suggestions=suggestions)


def rituximab_safety(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-rituximab")
    if not drafts:
        return None
    return card(ctx, "rituximab-safety", texts(ctx.k, "rituximab-safety")["summary"],
                [f"Rituximab order: {med_line(d)}" for d in drafts])
