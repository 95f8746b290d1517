"""Immune checkpoint inhibitor (ICI) rules: a new ICI order after ICI-related MG
or in pre-existing MG, and the active ICI order (ASCO 2021 irAE guideline).
The ICI history is judged with ICI doses at any date: a grade 3-4 ICI-related
MG never lapses."""
from __future__ import annotations

from cds_service.cards import Card

from ..fhir_read import fmt_date
from ..state import GradeEvidence
from .common import RuleContext, card, delete_draft, fill, med_line, texts, update_resource
from .drugs import prednisone_equivalent
from .registry import ORDER, PATIENT, rule

ICI_THRESHOLDS = ("ici_steroid_taper_mg_day", "prednisone_equivalent_factors")


def _evidence(e: GradeEvidence, what: str) -> str:
    return f"{what}: grade {e.grade}, {e.description}" + (f" ({fmt_date(e.date)})" if e.date else "")


def ici_verdict(ctx: RuleContext) -> tuple[str, str, list[str]] | None:
    """(indicator, reason key, findings) when an ICI must be stopped (critical: a grade 3-4
    ICI-related MG at any date) or held (warning: current grade 2, or a steroid started after
    the MG onset still above the taper threshold, in ICI-related MG); None otherwise."""
    if "ici" in ctx.memo:
        return ctx.memo["ici"]
    st = ctx.state
    verdict = None
    if st.history_grade34 is not None:
        verdict = ("critical", "stop", [_evidence(st.history_grade34, "History of ICI-related MG")])
    elif st.ici_related and st.grade is not None and st.grade >= 3:
        verdict = ("critical", "stop", [st.grade_text()])
    elif st.ici_related and st.grade == 2:
        verdict = ("warning", "hold", [st.grade_text()])
    elif st.ici_related and not st.preexisting_mg:
        limit = ctx.f("ici_steroid_taper_mg_day")
        steroids = []
        for m in st.active_meds("drug-corticosteroid"):
            if m.route != "systemic" or m.status not in ("active", "on-hold", "in-progress"):
                continue
            if st.mg_onset and m.start and m.start < st.mg_onset:
                continue  # started before the MG: not the MG's treatment
            dose = prednisone_equivalent(ctx, m)
            if dose is None:
                steroids.append(f"{med_line(m)}: dose could not be read (taper status unknown)")
            elif dose > limit:
                steroids.append(fill(ctx, texts(ctx.k, "ici-contraindicated")["finding_steroid"], name=med_line(m),
                                     dose=dose))
        if steroids:
            verdict = ("warning", "taper", steroids)
    ctx.memo["ici"] = verdict
    return verdict


@rule("ici-contraindicated", hooks=ORDER, thresholds=ICI_THRESHOLDS, valuesets=("drug-ici", "drug-corticosteroid"))
def ici_contraindicated(ctx: RuleContext) -> Card | None:
    """When a checkpoint inhibitor is drafted after a grade 3-4 ICI-related MG (at any date), then
    critical: permanently discontinue, remove the draft. When it is drafted in ICI-related MG at
    current grade 2, or with a steroid for that MG still above 10 mg/day prednisone-equivalent,
    then warn: hold until symptoms resolve and the taper is complete."""
    drafts = ctx.drafts_of("drug-ici")
    verdict = ici_verdict(ctx) if drafts else None
    if verdict is None:
        return None
    indicator, key, reasons = verdict
    meta = texts(ctx.k, "ici-contraindicated")
    findings = [f"Checkpoint inhibitor order: {med_line(d)}" for d in drafts] + reasons
    suggestions = [delete_draft(d, meta["suggestion"].format(name=d.name)) for d in drafts if d.resource_id]
    return card(ctx, "ici-contraindicated", meta[f"summary_{key}"], findings, why_key=f"why_{key}",
                indicator=indicator, suggestions=suggestions)


@rule("ici-preexisting-mg", hooks=ORDER, thresholds=ICI_THRESHOLDS, valuesets=("drug-ici",))
def ici_preexisting_mg(ctx: RuleContext) -> Card | None:
    """When a checkpoint inhibitor is drafted in MG that predates the first ICI dose, or as a
    rechallenge after a grade 2 ICI-related MG that has resolved with the taper complete (and
    no grade 3-4 history), then warn: ICIs can cause severe MG flares and myocarditis; neurology
    co-management, baseline CK, troponin and pulmonary function, close monitoring."""
    drafts = ctx.drafts_of("drug-ici")
    st = ctx.state
    if not drafts or ici_verdict(ctx) is not None:
        return None
    if st.history_grade2 is not None:
        reason = _evidence(st.history_grade2, "Earlier ICI-related MG (rechallenge)")
    elif st.preexisting_mg or st.ici_first_date is None:
        onset = f", recorded {fmt_date(st.mg_onset)}" if st.mg_onset else ""
        first = f"; first ICI dose {fmt_date(st.ici_first_date)}" if st.ici_first_date else "; no earlier ICI dose on file"
        reason = f"MG before the checkpoint inhibitor{onset}{first}"
    else:
        return None
    meta = texts(ctx.k, "ici-preexisting-mg")
    findings = [f"Checkpoint inhibitor order: {med_line(d)}" for d in drafts] + [reason]
    return card(ctx, "ici-preexisting-mg", meta["summary"], findings)


@rule("ici-discontinue", hooks=PATIENT, thresholds=ICI_THRESHOLDS, valuesets=("drug-ici",))
def ici_discontinue(ctx: RuleContext) -> Card | None:
    """When a checkpoint inhibitor order is active or on hold after a grade 3-4 ICI-related MG (at
    any date), then critical: stop it permanently (an on-hold order too). When an active order
    meets ICI-related MG at current grade 2, then warn: put it on hold."""
    active = [m for m in ctx.state.active_meds("drug-ici") if m.resource_type == "MedicationRequest"
              and m.status in ("active", "on-hold")]
    verdict = ici_verdict(ctx) if active else None
    if verdict is None or verdict[1] == "taper":
        return None
    indicator, key, reasons = verdict
    if key == "hold":
        active = [m for m in active if m.status == "active"]
        if not active:
            return None  # already held
    meta = texts(ctx.k, "ici-discontinue")
    names = ", ".join(sorted({m.name for m in active}))
    if len(names) > 60:
        names = "the checkpoint inhibitor"
    status = "stopped" if key == "stop" else "on-hold"
    suggestions = []
    for m in active:
        updated = ctx.state.original(m) if m.resource_id else None
        if updated is not None:
            updated["status"] = status
            updated["statusReason"] = {"text": meta[f"status_reason_{key}"]}
            suggestions.append(update_resource(updated, meta[f"suggestion_{key}"].format(name=m.name)))
    findings = [f"Checkpoint inhibitor order: {med_line(m)}" for m in active] + reasons
    return card(ctx, "ici-discontinue", meta[f"summary_{key}"].format(names=names), findings,
                why_key=f"why_{key}", indicator=indicator, suggestions=suggestions)
