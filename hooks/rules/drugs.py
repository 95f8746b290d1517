"""Drug rules: drugs that can worsen MG (new or chronic, by route),
pyridostigmine regimens, high-dose steroid initiation, and the weight/height a
dose check needs (MGFA guidance; each drug's prescribing information)."""
from __future__ import annotations

import re
from datetime import timedelta

from cds_service.cards import MAX_SUMMARY, Card

from ..dosing import LEVELS, OrderedDose, ordered_dose, pyridostigmine_regimen, with_dose
from ..fhir_read import as_list, cc_text
from ..state import MedEntry
from .common import RuleContext, card, delete_draft, fill, med_line, texts, update_resource
from .registry import BOTH, ORDER, rule
from .rituximab import needs_bsa

ER = re.compile(r"\b(er|xr|sr|cr|extended|sustained|timespan|controlled)\b")
PARENTERAL = re.compile(r"\b(iv|im|intravenous|intramuscular|injection|parenteral|subcutaneous)\b")


def _classes(ctx: RuleContext) -> dict[str, dict]:
    return texts(ctx.k, "mg-exacerbating-drug")["classes"]


def _worsening(ctx: RuleContext, entry: MedEntry) -> list[dict]:
    """The worsening classes an entry belongs to, given its route: ophthalmic beta-blockers are
    kept (info), other ophthalmic, otic and topical forms are not systemic exposure."""
    classes = [dict(meta, id=c) for c, meta in _classes(ctx).items() if entry.has(c)]
    if classes and entry.route != "systemic":  # the route is read only for a drug of a worsening class
        classes = [c for c in classes if entry.route in c.get("local_routes", ())]
    return classes


def _level(ctx: RuleContext, entry: MedEntry, classes: list[dict]) -> str:
    """New drugs: the class level, raised to critical at current grade 3-4 (never for neuromuscular
    blockers); chronic drugs and local forms: info, warning at grade 3-4, never critical."""
    base = max((c["level"] for c in classes), key=LEVELS.__getitem__)
    if entry.route != "systemic":
        return "info"
    if base == "info":
        return "info"
    if entry.chronic:
        return "warning" if ctx.severe else "info"
    return "critical" if ctx.severe or base == "critical" else "warning"


def _drug_name(entry: MedEntry) -> str:
    return entry.name.split(" ")[0].capitalize()


@rule("mg-exacerbating-drug", hooks=BOTH, thresholds=("beta_blocker_taper_weeks",),
      valuesets=("drug-beta-blocker", "drug-magnesium-iv", "drug-fluoroquinolone", "drug-aminoglycoside",
                 "drug-macrolide", "drug-telithromycin", "drug-quinine", "drug-botulinum-toxin",
                 "drug-hydroxychloroquine", "drug-penicillamine", "drug-procainamide", "drug-polymyxin",
                 "drug-neuromuscular-blocker"))
def mg_exacerbating_drug(ctx: RuleContext) -> Card | None:
    """When MG is present and a systemic drug that can worsen MG is drafted (order hooks) or on the
    medication list (patient-view), then warn, critical at current grade 3-4 (telithromycin and
    quinine always; neuromuscular blockers only info), and offer to remove a new drug; a chronic,
    tolerated drug is info (warning at grade 3-4), never removed with one click, and a cardiac
    drug is tapered, never stopped abruptly. Ophthalmic beta-blockers are info; other eye, ear
    and skin forms raise no card."""
    meta = texts(ctx.k, "mg-exacerbating-drug")
    pool = ctx.drafts if ctx.hook != "patient-view" else [
        m for m in ctx.state.active_meds() if m.resource_type == "MedicationRequest" and m.status in ("active", "on-hold")]
    found = [(e, cls) for e in pool if (cls := _worsening(ctx, e))]
    if not found:
        return None
    findings, suggestions, cites, levels = [], [], [], []
    for e, classes in found:
        level = _level(ctx, e, classes)
        levels.append(level)
        cardiac = any(c.get("cardiac") for c in classes)
        kinds = ", ".join(c["name"] for c in classes)
        state = "chronic, " if e.chronic else ("new, " if e.route == "systemic" else "")
        route = "" if e.route == "systemic" else f"{e.route} "
        line = f"{med_line(e)}: {route}{kinds} ({state}{level})"
        notes = [c["note"] for c in classes if c.get("note")]
        if e.chronic and cardiac:
            notes.append(fill(ctx, meta["taper"]))
        findings.append(line + (": " + " ".join(notes) if notes else ""))
        cites += [k for c in classes for k in c.get("citations", [])]
        removable = e.route == "systemic" and not e.chronic and all(c.get("removable", True) for c in classes)
        if not removable or not e.resource_id or e.resource_type != "MedicationRequest":
            continue
        if e.is_draft:
            suggestions.append(delete_draft(e, meta["suggestion_delete"].format(name=e.name)))
        elif not cardiac:
            stopped = ctx.state.original(e)
            if stopped is not None:
                stopped["status"] = "stopped"
                stopped["statusReason"] = {"text": meta["status_reason"]}
                suggestions.append(update_resource(stopped, meta["suggestion_stop"].format(name=e.name)))
    findings.append(ctx.state.grade_text())
    names = sorted({_drug_name(e) for e, _ in found})
    drugs = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
    chronic_only = all(e.chronic or e.route != "systemic" for e, _ in found)
    key = "summary_chronic" if chronic_only else "summary"
    summary = meta[key].format(drugs=drugs)
    if len(summary) >= MAX_SUMMARY:
        summary = meta[key].format(drugs=f"{len(names)} drugs")
    return card(ctx, "mg-exacerbating-drug", summary, findings, indicator=max(levels, key=LEVELS.__getitem__),
                suggestions=suggestions, selection="any", citations=cites)


def pyridostigmine_kind(entry: MedEntry, dose: OrderedDose) -> str:
    """ir | er | parenteral, from the route and the product's name and dosage text."""
    dosage = next(iter(as_list(entry.resource.get("dosageInstruction")) or [{}]), {}) \
        if isinstance(entry.resource, dict) else {}
    route = cc_text(dosage.get("route")) if isinstance(dosage, dict) else ""
    text = f"{entry.name} {dosage.get('text') or '' if isinstance(dosage, dict) else ''}".lower()
    if PARENTERAL.search(route.lower()) or PARENTERAL.search(text):
        return "parenteral"
    return "er" if ER.search(text) else "ir"


def _pyridostigmine_mg(ctx: RuleContext, entry: MedEntry, dose: OrderedDose) -> float | None:
    """The dose in mg: a mass dose, or tablets x the product's strength (hooks.fhir_read)."""
    if dose.dimension == "mass":
        return dose.amount
    if dose.dimension == "tablets":
        strength = entry.strength_mg
        return dose.amount * strength if strength else None
    return None


@rule("pyridostigmine-dose-check", hooks=ORDER, valuesets=("drug-pyridostigmine",),
      thresholds=("pyridostigmine_ir_max_mg_per_dose", "pyridostigmine_max_mg_per_day",
                  "pyridostigmine_max_mg_per_day_ici", "pyridostigmine_er_mg_per_dose",
                  "pyridostigmine_er_max_per_day", "pyridostigmine_er_min_interval_hours",
                  "pyridostigmine_parenteral_max_mg"))
def pyridostigmine_dose_check(ctx: RuleContext) -> Card | None:
    """When a pyridostigmine draft is above its form's regimen (immediate-release above 120 mg a
    dose; extended-release outside 180-540 mg once or twice daily; parenteral above 5 mg; a day
    above 480 mg in ICI-related MG, 1,500 mg otherwise), then warn; only a new immediate-release
    order is offered at 120 mg on its own frequency, never a cut in a dose the patient takes."""
    drafts = ctx.drafts_of("drug-pyridostigmine")
    if not drafts:
        return None
    meta = texts(ctx.k, "pyridostigmine-dose-check")
    ceiling = ctx.f("pyridostigmine_max_mg_per_day_ici" if ctx.state.ici_related else "pyridostigmine_max_mg_per_day")
    ir_max = ctx.f("pyridostigmine_ir_max_mg_per_dose")
    findings, suggestions, unreadable = [], [], []
    for d in drafts:
        dose = ordered_dose(d.resource, mass_target="mg")
        mg = None if dose.problem else _pyridostigmine_mg(ctx, d, dose)
        if mg is None:
            unreadable.append(f"{d.name}: {dose.problem or 'dose ' + dose.shown + ' could not be read in mg'}")
            continue
        kind = pyridostigmine_kind(d, dose)
        reading = pyridostigmine_regimen(mg, dose, kind, ceiling, ctx.t)
        if reading.level is None:
            continue
        findings.append(f"Ordered {d.name} ({meta['kinds'][kind]}{', chronic' if d.chronic else ''}): "
                        f"{reading.shown}: " + "; ".join(f for _, f in reading.findings))
        if kind == "ir" and d.new and mg > ir_max and d.resource_id:
            per_day = dose.per_day
            new = with_dose(d.resource, value=ir_max, unit="mg", frequency=max(1, round(per_day)), period=1,
                            period_unit="d", text=fill(ctx, meta["order_text"], per_day=per_day))
            suggestions.append(update_resource(new, fill(ctx, meta["suggestion"], per_day=per_day)))
    if findings:
        findings.append(f"Daily ceiling used: {ceiling:.0f} mg/day"
                        + (" (ICI-related MG)" if ctx.state.ici_related else ""))
        return card(ctx, "pyridostigmine-dose-check", meta["summary"], findings + unreadable, suggestions=suggestions)
    if unreadable:
        return card(ctx, "pyridostigmine-dose-check", meta["summary_unreadable"], unreadable)
    return None


def prednisone_equivalent(ctx: RuleContext, entry: MedEntry) -> float | None:
    """mg/day prednisone-equivalent of a corticosteroid order, or None when unreadable."""
    resource = entry.resource if isinstance(entry.resource, dict) else ctx.state.original(entry)
    if not isinstance(resource, dict):
        return None
    dose = ordered_dose(resource, mass_target="mg")
    if dose.problem or dose.dimension != "mass":
        return None
    name = entry.name.lower()
    factor = next((float(f) for drug, f in ctx.t("prednisone_equivalent_factors").items() if drug in name), None)
    return None if factor is None else dose.amount * dose.per_day * factor


@rule("steroid-initiation-worsening", hooks=ORDER, valuesets=("drug-corticosteroid", "drug-ivig",
                                                             "procedure-plasma-exchange"),
      thresholds=("steroid_high_dose_mg_day", "prednisone_equivalent_factors", "steroid_cover_days"))
def steroid_initiation_worsening(ctx: RuleContext) -> Card | None:
    """When a systemic corticosteroid draft starts, or raises the dose to, more than 20 mg/day
    prednisone-equivalent in MG, then at current grade 3-4 without IVIG or plasma exchange in the
    last 14 days or in the same order set: warn; in other MG: info. High-dose steroids can
    transiently worsen MG: start low and titrate, or start under IVIG/PLEX cover in a monitored
    setting."""
    st = ctx.state
    drafts = ctx.drafts_of("drug-corticosteroid")
    if not (drafts and st.mg_active) or (st.mgfa_class or "").upper() == "I":
        return None  # MGFA class I: ocular MG, not the generalized or bulbar MG the worsening is seen in
    limit = ctx.f("steroid_high_dose_mg_day")
    high = [(d, p) for d in drafts if d.route == "systemic" and (p := prednisone_equivalent(ctx, d)) is not None
            and p > limit]
    if not high:
        return None
    current = max((p for m in st.active_meds("drug-corticosteroid") if m.route == "systemic"
                   and m.resource_type == "MedicationRequest" and m.status == "active"
                   and (p := prednisone_equivalent(ctx, m)) is not None), default=0.0)
    high = [(d, p) for d, p in high if p > current]  # a renewal at an unchanged dose is no initiation
    if not high:
        return None
    meta = texts(ctx.k, "steroid-initiation-worsening")
    findings = [f"{med_line(d)}: {p:.0f} mg/day prednisone-equivalent" for d, p in high]
    if current:
        findings.append(f"Current corticosteroid dose: {current:.0f} mg/day prednisone-equivalent")
    if ctx.severe:
        since = st.now - timedelta(days=int(ctx.t("steroid_cover_days")))
        cover = [c for c in st.ivig_courses + st.plasma_exchange_courses if c.end >= since]
        if cover or ctx.drafts_of("drug-ivig") or ctx.draft_procedures:
            return None
        findings.append(st.grade_text())
        return card(ctx, "steroid-initiation-worsening", meta["summary_severe"], findings, indicator="warning")
    findings.append(st.grade_text())
    return card(ctx, "steroid-initiation-worsening", meta["summary"], findings, indicator="info")


@rule("dose-weight-missing", hooks=ORDER, valuesets=("vital-weight", "vital-height", "vital-bsa"),
      thresholds=("body_size_window_days", "rituximab_flat_mg", "rituximab_flat_tolerance"))
def dose_weight_missing(ctx: RuleContext) -> Card | None:
    """When a weight- or BSA-based dose check needs a weight (or height) that is not on file, then
    say what is missing and which check it blocks (info)."""
    body = ctx.state.body
    meta = texts(ctx.k, "dose-weight-missing")
    blocked, missing = [], set()
    if ctx.drafts_of("drug-ivig") and body.weight_kg is None:
        blocked.append(meta["blocked_ivig"])
        missing.add("weight")
    for d in ctx.drafts_of("drug-rituximab"):
        if needs_bsa(ctx, d.resource):
            blocked.append(fill(ctx, meta["blocked_rituximab"], name=d.name))
            missing.update(m for m, v in (("weight", body.weight_kg), ("height", body.height_cm)) if v is None)
            break
    if not blocked:
        return None
    what = " and ".join(sorted(missing)) or "weight"
    findings = [fill(ctx, meta["finding_missing"], what=m) for m in sorted(missing)]
    findings += [f"Blocked check: {b}" for b in blocked] + body.problems
    summary = meta["summary"].format(missing=what, checks="the " + ("dose" if len(blocked) == 1 else "doses"))
    return card(ctx, "dose-weight-missing", summary, findings)
