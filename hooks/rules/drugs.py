"""Drug rules: MG-worsening drugs, checkpoint inhibitors, pyridostigmine
dose, and the weight/height a dose check needs (seed: Medication
Interactions to Avoid; Treatment Algorithm by Disease Severity)."""
from __future__ import annotations

from cds_service.cards import Card

from ..dosing import ordered_dose, with_dose
from ..state import WORSENING, MedEntry
from .common import RuleContext, card, delete_draft, med_line, texts, update_resource
from .rituximab import _nearest_regimen, rituximab_dose_mg

MG_TREATMENT = ("drug-pyridostigmine", "drug-ivig", "drug-scig", "drug-rituximab", "drug-corticosteroid")


def _worsening_classes(entry: MedEntry) -> list[str]:
    return [WORSENING[c] for c in entry.classes if c in WORSENING]


def mg_exacerbating_drug(ctx: RuleContext) -> Card | None:
    """Order hooks: drafted drugs. patient-view: the active medication list."""
    meta = texts(ctx.k, "mg-exacerbating-drug")
    if ctx.hook == "patient-view":
        entries = [m for m in ctx.state.active_meds() if _worsening_classes(m)]
    else:
        entries = [d for d in ctx.drafts if _worsening_classes(d)]
    if not entries:
        return None
    findings = [f"{med_line(e)}: {', '.join(_worsening_classes(e))}" for e in entries]
    findings.append(ctx.state.grade_text())
    suggestions = []
    for e in entries:
        if not e.resource_id or e.resource_type != "MedicationRequest":
            continue
        if e.is_draft:
            suggestions.append(delete_draft(e, meta["suggestion_delete"].format(name=e.name)))
        else:
            stopped = ctx.state.original(e)
            if stopped is not None:
                stopped["status"] = "stopped"
                suggestions.append(update_resource(stopped, meta["suggestion_stop"].format(name=e.name)))
    names = sorted({e.name.split(" ")[0].capitalize() for e in entries})
    drugs = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    summary = meta["summary"].format(drugs=drugs)
    if len(summary) >= 140:
        summary = meta["summary"].format(drugs=f"{len(names)} ordered drugs")
    indicator = meta["indicator_severe"] if ctx.severe else meta["indicator"]
    return card(ctx, "mg-exacerbating-drug", summary, findings, indicator=indicator, suggestions=suggestions,
                selection="any")


def ici_contraindicated(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-ici")
    if not drafts:
        return None
    meta = texts(ctx.k, "ici-contraindicated")
    grade = ctx.state.grade
    findings = [f"Checkpoint inhibitor order: {med_line(d)}" for d in drafts] + [ctx.state.grade_text()]
    suggestions = [delete_draft(d, meta["suggestion"].format(name=d.name)) for d in drafts if d.resource_id]
    if ctx.severe:
        return card(ctx, "ici-contraindicated", meta["summary_severe"].format(grade=grade), findings,
                    why_key="why_severe", indicator="critical", suggestions=suggestions)
    steroids = ctx.state.active_meds("drug-corticosteroid")
    if grade == 2 or steroids:
        findings += [f"Corticosteroid (taper not complete): {med_line(s)}" for s in steroids]
        return card(ctx, "ici-contraindicated", meta["summary_hold"], findings, why_key="why_hold",
                    indicator="warning", suggestions=suggestions)
    together = [d for d in ctx.drafts if any(d.has(c) for c in MG_TREATMENT)]
    if ctx.hook == "order-sign" and together:
        findings += [f"MG treatment in the same order set: {med_line(d)}" for d in together]
        return card(ctx, "ici-contraindicated", meta["summary_with_mg_orders"], findings, why_key="why_hold",
                    indicator="warning", suggestions=suggestions)
    return None


def ici_discontinue(ctx: RuleContext) -> Card | None:
    grade = ctx.state.grade
    active = [m for m in ctx.state.active_meds("drug-ici") if m.resource_type == "MedicationRequest"
              and m.status in ("active", "on-hold")]
    if not active or grade is None:
        return None
    meta = texts(ctx.k, "ici-discontinue")
    severe = grade >= 3
    if not severe and all(m.status == "on-hold" for m in active):
        return None  # already held
    names = ", ".join(sorted({m.name for m in active}))
    if len(names) > 60:
        names = "the checkpoint inhibitor"
    status, key = ("stopped", "severe") if severe else ("on-hold", "hold")
    suggestions = []
    for m in active:
        updated = ctx.state.original(m) if m.resource_id else None
        if updated is not None:
            updated["status"] = status
            suggestions.append(update_resource(updated, meta[f"suggestion_{key}"].format(name=m.name)))
    findings = [f"Active checkpoint inhibitor: {med_line(m)}" for m in active] + [ctx.state.grade_text()]
    return card(ctx, "ici-discontinue", meta[f"summary_{key}"].format(grade=grade, names=names), findings,
                why_key=f"why_{key}", indicator="critical" if severe else "warning", suggestions=suggestions)


def pyridostigmine_dose_check(ctx: RuleContext) -> Card | None:
    drafts = ctx.drafts_of("drug-pyridostigmine")
    if not drafts:
        return None
    meta = texts(ctx.k, "pyridostigmine-dose-check")
    max_dose, max_day = float(ctx.t("pyridostigmine_max_mg_per_dose")), float(ctx.t("pyridostigmine_max_mg_per_day"))
    findings, suggestions, unreadable = [], [], []
    for d in drafts:
        dose = ordered_dose(d.resource, mass_target="mg")
        if dose.problem or dose.dimension != "mass":
            unreadable.append(f"{d.name}: {dose.problem or 'dose ' + dose.shown + ' is not a mass dose'}")
            continue
        daily = dose.amount * dose.per_day
        if dose.amount <= max_dose and daily <= max_day:
            continue
        findings.append(f"Ordered {d.name}: {dose.amount:.0f} mg x {dose.per_day:g}/day = {daily:.0f} mg/day")
        if d.resource_id:
            per_day = min(dose.per_day, max_day / max_dose)
            new_dose = min(dose.amount, max_dose, max_day / per_day)
            new = with_dose(d.resource, value=round(new_dose), unit="mg",
                            text=f"pyridostigmine {new_dose:.0f} mg PO {per_day:.0f} times daily (maximum)",
                            frequency=int(round(per_day)), period=1, period_unit="d")
            suggestions.append(update_resource(new, meta["suggestion"].format(dose=new_dose, per_day=per_day)))
    if findings:
        return card(ctx, "pyridostigmine-dose-check", meta["summary"], findings + unreadable, suggestions=suggestions)
    if unreadable:
        return card(ctx, "pyridostigmine-dose-check", meta["summary_unreadable"].format(problem="dose not interpretable"),
                    unreadable)
    return None


def dose_weight_missing(ctx: RuleContext) -> Card | None:
    body = ctx.state.body
    blocked, missing = [], set()
    if ctx.drafts_of("drug-ivig") and body.weight_kg is None:
        blocked.append("IVIG dose (0.4 g/kg/day)")
        missing.add("weight")
    for d in ctx.drafts_of("drug-rituximab"):
        mg, shown, problem = rituximab_dose_mg(ctx, d.resource)
        if body.bsa_m2 is None and (problem == "no BSA" or (mg is not None and _nearest_regimen(ctx, mg))):
            blocked.append(f"{d.name} {shown} is not 1000 mg; checking it against 375 mg/m2 needs the BSA")
            missing.update(m for m, v in (("weight", body.weight_kg), ("height", body.height_cm)) if v is None)
            break
    if not blocked:
        return None
    meta = texts(ctx.k, "dose-weight-missing")
    what = " and ".join(sorted(missing)) or "weight"
    window = ctx.t("body_size_window_days")
    findings = [f"No {m} recorded in the last {window} days" for m in sorted(missing)]
    findings += [f"Blocked check: {b}" for b in blocked] + body.problems
    summary = meta["summary"].format(missing=what, checks="the " + ("dose" if len(blocked) == 1 else "doses"))
    return card(ctx, "dose-weight-missing", summary, findings)
