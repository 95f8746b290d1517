"""Rituximab order rules: pre-treatment screening, positive hepatitis and TB
screens, the regimen, and the safety reminder (rituximab prescribing
information; AASLD and CDC hepatitis B guidance; CDC latent TB testing)."""
from __future__ import annotations

from cds_service.cards import Card

from ..dosing import Regimen, ordered_dose, rituximab_regimen, with_dose
from ..state import LabStatus
from .common import RuleContext, card, fill, lab_gaps_card, med_line, texts, update_resource
from .registry import ORDER, rule

SCREENING = ("igg", "igm", "iga", "hbsag", "anti-hbc", "hcv-ab", "tb")
POSITIVE_EVER = ("hbsag", "anti-hbc", "hcv-ab", "tb")  # a positive counts at any date, never re-ordered
DOSE_THRESHOLDS = ("rituximab_flat_mg", "rituximab_flat_tolerance", "rituximab_mg_per_m2", "rituximab_bsa_tolerance",
                   "rituximab_flat_doses", "rituximab_flat_interval_days", "rituximab_bsa_doses",
                   "rituximab_bsa_interval_days")


def _screen(ctx: RuleContext, concept: str, window: int) -> LabStatus:
    status = ctx.state.lab(concept, window)
    if not status.usable and concept in POSITIVE_EVER:
        positive = ctx.state.positive(concept)
        if positive is not None:
            return LabStatus(concept, "result", window, latest=positive)
    return status


@rule("rituximab-screening-incomplete", hooks=ORDER, thresholds=("lab_windows_days.rituximab_screening",),
      valuesets=("drug-rituximab", "lab-igg", "lab-igm", "lab-iga", "lab-hbsag", "lab-anti-hbc", "lab-hcv-ab", "lab-tb"))
def rituximab_screening_incomplete(ctx: RuleContext) -> Card | None:
    """When rituximab is drafted and any of IgG, IgM, IgA, HBsAg, total anti-HBc, HCV antibody or
    a TB test (IGRA or TST) has no result within 12 months (a positive one counts at any date),
    then warn and offer one order per missing test."""
    drafts = ctx.drafts_of("drug-rituximab")
    if not drafts:
        return None
    window = ctx.window("rituximab_screening")
    statuses = [_screen(ctx, c, window) for c in SCREENING]
    if all(s.usable for s in statuses):
        return None
    return lab_gaps_card(ctx, "rituximab-screening-incomplete", statuses,
                         [f"Rituximab order: {med_line(d)}" for d in drafts], short="{gaps} of {total} screening tests")


@rule("rituximab-hbv-positive", hooks=ORDER, thresholds=("hbv_prophylaxis_months",),
      valuesets=("drug-rituximab", "lab-hbsag", "lab-anti-hbc", "condition-hepatitis-b"))
def rituximab_hbv_positive(ctx: RuleContext) -> Card | None:
    """When rituximab is drafted and HBsAg or total anti-HBc was ever positive, or hepatitis B is
    on the problem list, then critical: HBV reactivation risk (boxed warning); HBV DNA, antiviral
    prophylaxis continued for at least 12 months after the last dose, hepatology review."""
    if not ctx.drafts_of("drug-rituximab"):
        return None
    findings = [f"{r.name}: {r.shown()}" for r in (ctx.state.positive("hbsag"), ctx.state.positive("anti-hbc"))
                if r is not None]
    findings += [f"Hepatitis B on the problem list: {c}" for c in ctx.state.conditions.get("condition-hepatitis-b", [])]
    if not findings:
        return None
    return card(ctx, "rituximab-hbv-positive", texts(ctx.k, "rituximab-hbv-positive")["summary"], findings)


@rule("rituximab-hcv-positive", hooks=ORDER, valuesets=("drug-rituximab", "lab-hcv-ab"))
def rituximab_hcv_positive(ctx: RuleContext) -> Card | None:
    """When rituximab is drafted and the HCV antibody was ever positive, then warn: HCV RNA and
    specialist review before B-cell depletion."""
    result = ctx.state.positive("hcv-ab") if ctx.drafts_of("drug-rituximab") else None
    if result is None:
        return None
    return card(ctx, "rituximab-hcv-positive", texts(ctx.k, "rituximab-hcv-positive")["summary"],
                [f"{result.name}: {result.shown()}"])


@rule("rituximab-tb-positive", hooks=ORDER, thresholds=("lab_windows_days.rituximab_screening",),
      valuesets=("drug-rituximab", "lab-tb"))
def rituximab_tb_positive(ctx: RuleContext) -> Card | None:
    """When rituximab is drafted and an IGRA or TST was ever positive, then warn: exclude active TB,
    then treat latent TB; when the latest TB test within 12 months is indeterminate or has no
    overall result, then info: repeat it."""
    if not ctx.drafts_of("drug-rituximab"):
        return None
    meta = texts(ctx.k, "rituximab-tb-positive")
    positive = ctx.state.positive("tb")
    if positive is not None:
        return card(ctx, "rituximab-tb-positive", meta["summary"], [f"{positive.name}: {positive.shown()}"],
                    indicator="warning")
    status = ctx.state.lab("tb", ctx.window("rituximab_screening"))
    result = status.latest if status.usable else None
    if result is None:
        return None
    finding = [f"{result.name}: {result.shown()}"]
    if result.interpretation == "indeterminate":
        return card(ctx, "rituximab-tb-positive", meta["summary_indeterminate"], finding, why_key="why_repeat",
                    indicator="info")
    if result.interpretation is None:
        return card(ctx, "rituximab-tb-positive", meta["summary_unreadable"],
                    finding + ["No overall positive/negative result was found (component values only)."],
                    why_key="why_repeat", indicator="info")
    return None


def rituximab_dose_mg(ctx: RuleContext, resource: dict) -> tuple[float | None, str, str | None]:
    """(ordered dose in mg, as ordered, problem); "no BSA" when a mg/m2 dose cannot be converted."""
    dose = ordered_dose(resource, mass_target="mg")
    if dose.problem:
        return None, dose.shown, dose.problem
    if dose.dimension == "per_m2":
        bsa = ctx.state.body.bsa_m2
        return (dose.amount * bsa if bsa else None), dose.shown, None if bsa else "no BSA"
    if dose.dimension != "mass":
        return None, dose.shown, f"dose {dose.shown} is not a mass or mg/m2 dose"
    return dose.amount, dose.shown, None


def needs_bsa(ctx: RuleContext, resource: dict) -> bool:
    """True when only the BSA could say whether a rituximab order fits: a mg/m2 dose, or a mass dose
    that is not the flat regimen's, with no BSA on file."""
    if ctx.state.body.bsa_m2 is not None:
        return False
    mg, _, problem = rituximab_dose_mg(ctx, resource)
    if problem == "no BSA":
        return True
    return mg is not None and abs(mg - ctx.f("rituximab_flat_mg")) / ctx.f("rituximab_flat_mg") > ctx.f(
        "rituximab_flat_tolerance")


def _regimen_order(ctx: RuleContext, resource: dict, fix: dict) -> dict:
    text = fill(ctx, texts(ctx.k, "rituximab-dose-check")[f"order_text_{fix['regimen']}"], mg=fix["mg"])
    return with_dose(resource, value=fix["mg"], unit="mg", text=text, frequency=1, period=fix["interval_days"],
                     period_unit="d", count=fix["count"])


@rule("rituximab-dose-check", hooks=ORDER, thresholds=DOSE_THRESHOLDS, valuesets=("drug-rituximab",))
def rituximab_dose_check(ctx: RuleContext) -> Card | None:
    """When a rituximab draft fits neither regimen A (1000 mg, 2 doses 14 days apart) nor B
    (375 mg/m2 weekly x4), then for an overdose (a flat dose or course above A, a BSA dose above
    B) warn and offer the nearest regimen of the same kind; for a lower dose (low-dose regimens
    are used) say the order differs and suggest nothing."""
    drafts = ctx.drafts_of("drug-rituximab")
    if not drafts:
        return None
    meta = texts(ctx.k, "rituximab-dose-check")
    body = ctx.state.body
    findings, suggestions, unreadable, readings = [], [], [], []
    if body.bsa_m2:
        findings.append(f"BSA {body.bsa_m2:.2f} m2 ({body.bsa_source}) -> {ctx.f('rituximab_mg_per_m2'):g} mg/m2 = "
                        f"{ctx.f('rituximab_mg_per_m2') * body.bsa_m2:.0f} mg")
    for d in drafts:
        mg, shown, problem = rituximab_dose_mg(ctx, d.resource)
        if problem == "no BSA" or (problem is None and needs_bsa(ctx, d.resource)):
            continue  # dose-weight-missing says the BSA is missing
        if problem:
            unreadable.append(f"{d.name}: {problem}")
            continue
        reading: Regimen = rituximab_regimen(ordered_dose(d.resource, mass_target="mg"), mg, body.bsa_m2, ctx.t)
        if reading.level is None:
            continue
        readings.append(reading)
        findings.append(f"Ordered {d.name}: {reading.shown}: " + "; ".join(f for _, f in reading.findings))
        if reading.fix and d.resource_id:
            label = fill(ctx, meta[f"suggestion_{reading.fix['regimen']}"], mg=reading.fix["mg"])
            suggestions.append(update_resource(_regimen_order(ctx, d.resource, reading.fix), label))
    if not readings:
        if unreadable:
            return card(ctx, "rituximab-dose-check", meta["summary_unreadable"], unreadable, indicator="warning")
        return None
    over = any(r.level == "warning" for r in readings)
    return card(ctx, "rituximab-dose-check", fill(ctx, meta["summary_over" if over else "summary_under"]),
                findings + unreadable, why_key="why" if over else "why_under",
                indicator="warning" if over else "info", suggestions=suggestions if over else None)


@rule("rituximab-safety", hooks=ORDER, valuesets=("drug-rituximab",))
def rituximab_safety(ctx: RuleContext) -> Card | None:
    """When rituximab is drafted, then once per request (info): PML/JC virus and infection
    vigilance, infusion-reaction premedication (label)."""
    drafts = ctx.drafts_of("drug-rituximab")
    if not drafts:
        return None
    return card(ctx, "rituximab-safety", texts(ctx.k, "rituximab-safety")["summary"],
                [f"Rituximab order: {med_line(d)}" for d in drafts])
