"""Workup and monitoring gaps (patient-view): MG workup, myocarditis, and
immunotherapy monitoring (seed: Essential Laboratory Assessment; Monitoring
During Treatment; Common Pitfalls)."""
from __future__ import annotations

from datetime import timedelta

from cds_service.cards import Card

from .common import RuleContext, card, lab_gaps_card, lab_order, service_request, texts
from .management import course_starts

WORKUP = ("achr-ab", "striational-ab", "ck", "aldolase", "esr", "crp", "fvc", "nif")


def mg_workup_incomplete(ctx: RuleContext) -> Card | None:
    if ctx.state.grade is None:
        return None
    statuses = [ctx.state.lab(c, ctx.state.window("workup")) for c in WORKUP]
    if all(s.usable for s in statuses):
        return None
    return lab_gaps_card(ctx, "mg-workup-incomplete", statuses, [ctx.state.grade_text()])


def myocarditis_check(ctx: RuleContext) -> Card | None:
    st = ctx.state
    if not (ctx.severe or (st.ici_related and st.grade is not None)):
        return None
    meta = texts(ctx.k, "myocarditis-check")
    status = st.lab("troponin", st.window("troponin"))
    findings = [status.describe(), st.grade_text()]
    if st.ici_related:
        findings.append("On a checkpoint inhibitor: ICI-related MG can come with myocarditis")
    if status.usable:
        r = status.latest
        high = r.interpretation in ("high", "abnormal", "positive") or (
            r.value is not None and r.ref_high is not None and r.value > r.ref_high)
        if not high:
            return None
        ecg = service_request(ctx, {"text": "12-lead electrocardiogram"}, meta["suggestion_ecg"])
        return card(ctx, "myocarditis-check", meta["summary_high"], findings, indicator="critical", suggestions=[ecg],
                    selection="any")
    if status.status == "pending":
        return None
    suggestions = [lab_order(ctx, "troponin", meta["suggestion_troponin"]),
                   service_request(ctx, {"text": "12-lead electrocardiogram"}, meta["suggestion_ecg"])]
    return card(ctx, "myocarditis-check", meta["summary_missing"].format(grade=st.grade), findings,
                indicator="warning", suggestions=suggestions, selection="any")


def immunotherapy_monitoring_due(ctx: RuleContext) -> Card | None:
    st = ctx.state
    year = st.now - timedelta(days=365)
    ivig_courses = [d for d in course_starts(st.ivig_dates) if d >= year]
    on_ivig = bool(st.active_meds("drug-ivig")) or bool(ivig_courses)
    on_rituximab = bool(st.active_meds("drug-rituximab"))
    if not (on_ivig or on_rituximab):
        return None
    maintenance = len(ivig_courses) >= int(ctx.t("ivig_maintenance_min_courses")) or any(
        m.resource_type == "MedicationRequest" and m.status == "active" for m in st.active_meds("drug-ivig"))
    statuses = []
    if maintenance:
        statuses.append(st.lab("igg", st.window("igg_trough")))
    statuses += [st.lab("cbc", st.window("blood_monitoring")), st.lab("chemistry", st.window("blood_monitoring"))]
    if all(s.usable for s in statuses):
        return None
    therapy = " and ".join(t for t, on in (("IVIG", on_ivig), ("rituximab", on_rituximab)) if on)
    return lab_gaps_card(ctx, "immunotherapy-monitoring-due", statuses, [ctx.state.grade_text()], therapy=therapy)
