"""IVIG order rules: IgA before IVIG, the 0.4 g/kg/day dose, and plasma
exchange after IVIG (seed: Critical Safety Considerations, Common Pitfalls)."""
from __future__ import annotations

from datetime import timedelta

from cds_service.cards import Card

from ..dosing import ordered_dose, with_dose
from ..fhir_read import fmt_date
from .common import RuleContext, card, delete_draft, lab_order, med_line, texts, update_resource


def _iga_deficient(ctx: RuleContext) -> str | None:
    """Why the patient counts as IgA deficient, or None."""
    for name in ctx.state.conditions.get("condition-iga-deficiency", []):
        return f"IgA deficiency on the problem list: {name}"
    status = ctx.state.lab("iga", ctx.state.window("iga"))
    latest = status.latest if status.status in ("result", "stale") else None
    if latest is None:
        return None
    limit = float(ctx.t("iga_deficient_mg_dl"))
    text = (latest.reading.text if latest.reading else "").lower()
    if latest.value is not None and (latest.value < limit or (latest.reading.comparator in ("<", "<=")
                                                               and latest.value <= limit)):
        return f"IgA {latest.shown()} is below {limit:g} mg/dL"
    if "deficien" in text or "undetectable" in text:
        return f"IgA {latest.shown()} is flagged deficient"
    return None


def ivig_iga_unknown(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-ivig")
    if not drafts or _iga_deficient(ctx):
        return None
    status = ctx.state.lab("iga", ctx.state.window("iga"))
    if status.usable:
        return None
    meta = texts(ctx.k, "ivig-iga-unknown")
    findings = [status.describe()] + [f"IVIG order: {med_line(d)}" for d in drafts]
    if status.status == "pending":
        return card(ctx, "ivig-iga-unknown", meta["summary_pending"], findings)
    return card(ctx, "ivig-iga-unknown", meta["summary"], findings,
                suggestions=[lab_order(ctx, "iga", meta["suggestion"])])


def ivig_iga_deficient(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-ivig")
    reason = _iga_deficient(ctx) if drafts else None
    if not reason:
        return None
    meta = texts(ctx.k, "ivig-iga-deficient")
    findings = [reason] + [f"IVIG order: {med_line(d)}" for d in drafts]
    suggestions = [delete_draft(d, meta["suggestion"]) for d in drafts if d.resource_id]
    return card(ctx, "ivig-iga-deficient", meta["summary"], findings, suggestions=suggestions)


def ivig_dose_check(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-ivig")
    weight = ctx.state.body.weight_kg
    if not drafts or weight is None:
        return None  # dose-weight-missing says which check is blocked
    meta = texts(ctx.k, "ivig-dose-check")
    per_kg_day, course_per_kg = float(ctx.t("ivig_g_per_kg_per_day")), float(ctx.t("ivig_course_g_per_kg"))
    days_std, tol = int(ctx.t("ivig_course_days")), float(ctx.t("ivig_dose_tolerance"))
    expected_daily, expected_course = per_kg_day * weight, course_per_kg * weight
    body = ctx.state.body
    base = (f"weight {weight:.1f} kg ({fmt_date(body.weight_date)}) -> IVIG {expected_daily:.1f} g/day x "
            f"{days_std} days ({course_per_kg:g} g/kg course = {expected_course:.0f} g)")
    findings, suggestions, unreadable = [base], [], []
    for d in drafts:
        dose = ordered_dose(d.resource)
        if dose.problem:
            unreadable.append(f"{d.name}: {dose.problem} (ordered: {dose.shown})")
            continue
        per_admin_g = dose.amount * weight if dose.dimension == "per_kg" else dose.amount
        if dose.dimension not in ("mass", "per_kg") or per_admin_g is None:
            unreadable.append(f"{d.name}: dose {dose.shown} is not a mass or per-kg dose")
            continue
        daily = per_admin_g * dose.per_day
        course = dose.course_total_g if dose.course_total_g is not None else (
            daily * dose.days if dose.days is not None else None)
        daily_off = abs(daily - expected_daily) / expected_daily > tol
        course_off = course is not None and abs(course - expected_course) / expected_course > tol
        timing = "" if dose.timing_stated else " (no frequency given: read as once daily)"
        days = f" x {dose.days:g} days" if dose.days is not None else ""
        line = (f"Ordered {d.name}: {dose.shown}{timing} = {daily:.1f} g/day ({daily / weight:.2f} g/kg/day){days}"
                + (f", course {course:.0f} g ({course / weight:.2f} g/kg)" if course is not None else ""))
        if not (daily_off or course_off):
            continue
        findings.append(line)
        if d.resource_id:
            new = with_dose(d.resource, value=round(expected_daily, 1), unit="g",
                            text=f"{expected_daily:.1f} g IV once daily for {days_std} days (0.4 g/kg/day, weight {weight:.1f} kg)",
                            duration_days=days_std, course_total=(round(expected_course, 1), "g"))
            suggestions.append(update_resource(new, meta["suggestion"].format(expected_daily=expected_daily)))
    if unreadable and len(findings) == 1:
        return card(ctx, "ivig-dose-check", meta["summary_unreadable"].format(problem="dose not interpretable"),
                    findings + unreadable)
    if len(findings) == 1:
        return None
    summary = meta["summary"].format(expected_daily=expected_daily, weight=weight)
    return card(ctx, "ivig-dose-check", summary, findings + unreadable, suggestions=suggestions)


def plex_after_ivig(ctx: RuleContext) -> Card | None:
    plex = ctx.draft_procedures
    if not plex:
        return None
    window = timedelta(days=int(ctx.t("plex_after_ivig_days")))
    now = ctx.state.now
    recent = [d for d in ctx.state.ivig_dates if now - window <= d <= now + timedelta(days=1)]
    ivig_drafts = ctx.drafts_of("drug-ivig")
    if not recent and not ivig_drafts:
        return None
    findings = [f"Plasma exchange order: {p.name} (drafted)" for p in plex]
    if recent:
        findings.append(f"Last IVIG dose {fmt_date(recent[-1])} ({(now - recent[-1]).days} days ago)")
    findings += [f"IVIG ordered in the same set: {med_line(d)}" for d in ivig_drafts]
    return card(ctx, "plex-after-ivig", texts(ctx.k, "plex-after-ivig")["summary"], findings)
