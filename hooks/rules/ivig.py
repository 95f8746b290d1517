"""IVIG order rules: serum IgA before IVIG, IgA deficiency and the product,
the regimen (induction or maintenance), kidney function, and plasma exchange
after IVIG (MGFA guidance; US IVIG prescribing information)."""
from __future__ import annotations

from datetime import timedelta

from cds_service.cards import Card

from ..dosing import LEVELS, ivig_regimen, ordered_dose, with_dose
from ..fhir_read import fmt_date
from ..state import MedEntry
from .common import ORDERABLE, RuleContext, card, delete_draft, fill, lab_order, med_line, texts, update_resource
from .registry import ORDER, rule

IG_CLASSES = ("drug-ivig", "drug-scig", "drug-immune-globulin-generic")


def iga_deficiency(ctx: RuleContext) -> str | None:
    """Why the patient counts as IgA deficient (IgA below the cut-off at any date, or coded on
    the problem list), or None. A low flag alone is not deficiency."""
    for name in ctx.state.conditions.get("condition-iga-deficiency", []):
        return f"IgA deficiency on the problem list: {name}"
    status = ctx.state.lab_ever("iga")
    latest = status.latest if status.status == "result" else None
    if latest is None:
        return None
    limit = ctx.f("iga_deficient_mg_dl")
    text = (latest.reading.text if latest.reading else "").lower()
    if latest.value is not None and (latest.value < limit or (latest.reading.comparator in ("<", "<=")
                                                               and latest.value <= limit)):
        return f"IgA {latest.shown()} is below {limit:g} mg/dL"
    if "deficien" in text or "undetectable" in text:
        return f"IgA {latest.shown()} is reported as deficient"
    return None


def ig_reactions(ctx: RuleContext) -> list[str]:
    """Recorded reactions to immune globulin that make a standard product dangerous: an
    allergy of high criticality or with a severe reaction."""
    return [f"Allergy to {a.name}: " + ("severe reaction" if a.severe else f"criticality {a.criticality}")
            + (f" ({fmt_date(a.date)})" if a.date else "")
            for a in ctx.state.allergies if any(c in a.classes for c in IG_CLASSES)
            and (a.severe or a.criticality == "high")]


@rule("ivig-iga-unknown", hooks=ORDER, thresholds=("iga_deficient_mg_dl",), valuesets=("lab-iga", "drug-ivig"))
def ivig_iga_unknown(ctx: RuleContext) -> Card | None:
    """When IVIG is drafted and no serum IgA result exists at any date (a one-time test), then
    check IgA first: warning, or info when earlier IVIG courses were given with no recorded
    reaction; offers an IgA order unless one is pending or the data may hold a result."""
    drafts = ctx.drafts_of("drug-ivig")
    if not drafts or iga_deficiency(ctx):
        return None
    status = ctx.state.lab_ever("iga")
    if status.usable:
        return None
    meta = texts(ctx.k, "ivig-iga-unknown")
    findings = [status.describe()] + [f"IVIG order: {med_line(d)}" for d in drafts]
    drafted = {d.resource_id for d in drafts}
    courses = [c for c in ctx.state.ivig_courses if c.resource_id not in drafted]  # the order itself is no earlier course
    tolerated = bool(courses) and not any(any(c in a.classes for c in IG_CLASSES) for a in ctx.state.allergies)
    if tolerated:
        findings.append(f"{len(courses)} earlier IVIG course(s), the last from {fmt_date(courses[-1].start)}, "
                        "with no recorded reaction to immune globulin")
    indicator = "info" if tolerated else "warning"
    if status.status == "pending":
        return card(ctx, "ivig-iga-unknown", meta["summary_pending"], findings, indicator=indicator)
    if status.status not in ORDERABLE:
        return card(ctx, "ivig-iga-unknown", meta["summary_unknown"], findings, indicator=indicator)
    return card(ctx, "ivig-iga-unknown", meta["summary"], findings, indicator=indicator,
                suggestions=[lab_order(ctx, "iga", meta["suggestion"])])


@rule("ivig-iga-deficient", hooks=ORDER, thresholds=("iga_deficient_mg_dl", "ivig_iga_depleted_max_ug_per_ml"),
      valuesets=("condition-iga-deficiency", "lab-iga", "lab-anti-iga", "drug-ivig-iga-depleted"))
def ivig_iga_deficient(ctx: RuleContext) -> Card | None:
    """When IVIG is drafted for a patient with IgA deficiency (IgA below the cut-off, or coded),
    then for a standard product: warning (critical with anti-IgA antibodies or a prior
    anaphylactic reaction to immune globulin), remove it and use an IgA-depleted product or
    plasma exchange without delaying treatment; for an IgA-depleted product: info only."""
    drafts = ctx.drafts_of("drug-ivig")
    reason = iga_deficiency(ctx) if drafts else None
    if not reason:
        return None
    meta = texts(ctx.k, "ivig-iga-deficient")
    findings = [reason]
    anti = ctx.state.positive("anti-iga")
    high_risk = ([f"Anti-IgA antibodies: {anti.name} {anti.shown()}"] if anti else []) + ig_reactions(ctx)
    findings += high_risk
    standard = [d for d in drafts if not d.iga_depleted]
    for d in drafts:
        content = f", label IgA content {d.iga_content}" if d.iga_content else ""
        findings.append(f"IVIG order: {med_line(d)}" + (f": an IgA-depleted product{content}" if d.iga_depleted else
                                                       ": a standard product (IgA content not known to be low)"))
    if not standard:
        return card(ctx, "ivig-iga-deficient", meta["summary_depleted"], findings, why_key="why_depleted",
                    indicator="info")
    suggestions = [delete_draft(d, meta["suggestion"]) for d in standard if d.resource_id]
    return card(ctx, "ivig-iga-deficient", meta["summary"], findings, indicator="critical" if high_risk else "warning",
                suggestions=suggestions)


def _fixed_order(ctx: RuleContext, d: MedEntry, fix: dict, weight: float) -> dict:
    if "days" in fix:
        return with_dose(d.resource, value=fix["g"], unit="g", duration_days=fix["days"],
                         text=fill(ctx, texts(ctx.k, "ivig-dose-check")["order_text_induction"], g=fix["g"],
                                   days=fix["days"], weight=weight),
                         course_total=(round(fix["g"] * fix["days"], 1), "g"))
    return with_dose(d.resource, value=fix["g"], unit="g", period=fix["interval_days"], count=None,
                     text=fill(ctx, texts(ctx.k, "ivig-dose-check")["order_text_maintenance"], g=fix["g"],
                               weeks=fix["interval_days"] / 7, weight=weight))


@rule("ivig-dose-check", hooks=ORDER, valuesets=("drug-ivig", "vital-weight"),
      thresholds=("ivig_dose_tolerance", "ivig_critical_day_g_per_kg", "ivig_critical_course_g_per_kg",
                  "ivig_maintenance_g_per_kg", "ivig_maintenance_interval_days", "course_gap_days",
                  "ivig_day_max_g_per_kg", "ivig_induction_g_per_kg", "ivig_induction_days"))
def ivig_dose_check(ctx: RuleContext) -> Card | None:
    """When an IVIG draft fits neither induction (2 g/kg over 2-5 days, no day above 1 g/kg) nor
    maintenance (0.4-1 g/kg every 2-8 weeks), then warn (critical for a course of 3 g/kg or a
    day of 2 g/kg or more; info for an induction below 2 g/kg) and, above the regimen, offer
    the draft at the regimen's dose on the prescriber's own schedule."""
    drafts = ctx.drafts_of("drug-ivig")
    weight = ctx.state.body.weight_kg
    if not drafts or weight is None:
        return None  # dose-weight-missing says which check is blocked
    meta = texts(ctx.k, "ivig-dose-check")
    findings = [f"Weight {weight:.1f} kg ({fmt_date(ctx.state.body.weight_date)})"]
    suggestions, unreadable, level = [], [], None
    for d in drafts:
        dose = ordered_dose(d.resource)
        if dose.problem or dose.dimension not in ("mass", "per_kg") or dose.amount is None:
            unreadable.append(f"{d.name}: {dose.problem or 'dose ' + dose.shown + ' is not a mass or per-kg dose'}")
            continue
        reading = ivig_regimen(dose, weight, ctx.t)
        if reading.level is None:
            continue
        timing = "" if dose.timing_stated else " (no frequency given: read as once daily)"
        findings.append(f"Ordered {d.name}: {reading.shown}{timing}: " + "; ".join(f for _, f in reading.findings))
        level = max(level or "info", reading.level, key=LEVELS.__getitem__)
        if reading.fix and d.resource_id:
            label_key = "suggestion_induction" if "days" in reading.fix else "suggestion_maintenance"
            label = fill(ctx, meta[label_key], g=reading.fix["g"], days=reading.fix.get("days"),
                         weeks=reading.fix.get("interval_days", 0) / 7)
            suggestions.append(update_resource(_fixed_order(ctx, d, reading.fix, weight), label))
    if level is None:
        if unreadable:
            return card(ctx, "ivig-dose-check", meta["summary_unreadable"], findings + unreadable, indicator="warning")
        return None
    summary = meta[f"summary_{level}"]
    return card(ctx, "ivig-dose-check", summary, findings + unreadable, indicator=level, suggestions=suggestions)


@rule("ivig-renal-check", hooks=ORDER, thresholds=("lab_windows_days.renal", "egfr_low_ml_min"),
      valuesets=("lab-creatinine", "lab-egfr", "drug-ivig"))
def ivig_renal_check(ctx: RuleContext) -> Card | None:
    """When IVIG is drafted with no serum creatinine or eGFR in the last 30 days, then (info) order a
    creatinine; when the eGFR is below 60, then warn: the label's boxed warning on renal
    dysfunction and thrombosis (minimum infusion rate and concentration, hydration)."""
    drafts = ctx.drafts_of("drug-ivig")
    if not drafts:
        return None
    meta = texts(ctx.k, "ivig-renal-check")
    window = ctx.window("renal")
    egfr, creat = ctx.state.lab("egfr", window), ctx.state.lab("creatinine", window)
    findings = [egfr.describe(), creat.describe()] + [f"IVIG order: {med_line(d)}" for d in drafts]
    limit = ctx.f("egfr_low_ml_min")
    if egfr.usable and egfr.latest.value is not None and egfr.latest.value < limit:
        return card(ctx, "ivig-renal-check", fill(ctx, meta["summary_low"], egfr=egfr.latest.value), findings,
                    why_key="why_low", indicator="warning")
    if egfr.usable or creat.usable:
        return None
    if egfr.status in ORDERABLE and creat.status in ORDERABLE:
        return card(ctx, "ivig-renal-check", fill(ctx, meta["summary"]), findings, indicator="info",
                    suggestions=[lab_order(ctx, "creatinine", meta["suggestion"])])
    return card(ctx, "ivig-renal-check", fill(ctx, meta["summary_not_known"]), findings, indicator="info")


@rule("plex-after-ivig", hooks=ORDER, thresholds=("plex_after_ivig_days",),
      valuesets=("procedure-plasma-exchange", "drug-ivig"))
def plex_after_ivig(ctx: RuleContext) -> Card | None:
    """When plasma exchange is drafted within 14 days after the last IVIG dose, while an IVIG order
    is active (its doses may be under way although none is recorded as given), or with IVIG in the
    same order set, then warn: plasma exchange removes the infused immunoglobulin; defer it or
    choose one therapy."""
    plex = ctx.draft_procedures
    if not plex:
        return None
    window = timedelta(days=int(ctx.t("plex_after_ivig_days")))
    now = ctx.state.now
    recent = [c.end for c in ctx.state.ivig_courses if now - window <= c.end <= now + timedelta(days=1)]
    ivig_drafts = ctx.drafts_of("drug-ivig")
    ongoing = [m for m in ctx.state.active_meds("drug-ivig") if m.resource_type == "MedicationRequest"
               and m.status in ("active", "on-hold")]
    if not recent and not ivig_drafts and not ongoing:
        return None
    findings = [f"Plasma exchange order: {p.name} (drafted)" for p in plex]
    if recent:
        findings.append(f"Last IVIG dose {fmt_date(recent[-1])} ({(now - recent[-1]).days} days ago)")
    findings += [f"IVIG order active (doses may be under way): {med_line(m)}" for m in ongoing]
    findings += [f"IVIG ordered in the same set: {med_line(d)}" for d in ivig_drafts]
    return card(ctx, "plex-after-ivig", fill(ctx, texts(ctx.k, "plex-after-ivig")["summary"]), findings)
