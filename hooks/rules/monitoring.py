"""Workup and monitoring gaps (patient-view): the ICI-related MG workup,
myocarditis, and monitoring on maintenance immunotherapy (ASCO 2021; IVIG and
rituximab prescribing information)."""
from __future__ import annotations

from datetime import timedelta

from cds_service.cards import Card

from ..dosing import ordered_dose
from ..state import LabStatus
from .common import RuleContext, card, lab_gaps_card, lab_order, service_request, texts
from .registry import PATIENT, rule

ONE_TIME = ("achr-ab", "striational-ab")  # diagnostic antibodies: done once, never re-ordered
RECENT = ("ck", "aldolase", "esr", "crp", "fvc", "nif")


@rule("mg-workup-incomplete", hooks=PATIENT, thresholds=("lab_windows_days.workup",),
      valuesets=("lab-achr-ab", "lab-striational-ab", "lab-ck", "lab-aldolase", "lab-esr", "lab-crp", "lab-fvc",
                 "lab-nif"))
def mg_workup_incomplete(ctx: RuleContext) -> Card | None:
    """When ICI-related MG is at grade 2 or higher and AChR or anti-striational antibodies were
    never tested, or CK, aldolase, ESR, CRP, vital capacity or NIF have no result in the last
    30 days, then (info) offer one order per missing test; electrodiagnostic studies in text."""
    st = ctx.state
    if not (st.mg_active and st.ici_related and st.grade is not None and st.grade >= 2):
        return None
    window = ctx.window("workup")
    statuses = [st.lab_ever(c) for c in ONE_TIME] + [st.lab(c, window) for c in RECENT]
    if all(s.usable for s in statuses):
        return None
    return lab_gaps_card(ctx, "mg-workup-incomplete", statuses, [st.grade_text()])


@rule("myocarditis-check", hooks=PATIENT, thresholds=("lab_windows_days.troponin",), valuesets=("lab-troponin",))
def myocarditis_check(ctx: RuleContext) -> Card | None:
    """When MG is ICI-related (any grade), then with no troponin in the last 7 days warn: troponin
    and ECG; with a troponin above its reference range, critical: urgent cardiology review,
    echocardiography or cardiac MRI, and hold the ICI."""
    st = ctx.state
    if not (st.ici_related and st.ici_exposure):
        return None
    meta = texts(ctx.k, "myocarditis-check")
    status = st.lab("troponin", ctx.window("troponin"))
    findings = [status.describe(), st.grade_text(), meta["finding_ici"]]
    ecg = service_request(ctx, {"text": meta["ecg_text"]}, meta["suggestion_ecg"])
    if status.usable:
        r = status.latest
        high = r.interpretation in ("high", "abnormal", "positive") or (
            r.value is not None and r.ref_high is not None and r.value > r.ref_high)
        if not high:
            return None
        return card(ctx, "myocarditis-check", meta["summary_high"], findings, why_key="why_high", indicator="critical",
                    suggestions=[ecg], selection="any")
    if status.status == "pending":
        return None
    suggestions = [ecg]
    if status.status in ("missing", "stale", "not-a-result"):
        suggestions.insert(0, lab_order(ctx, "troponin", meta["suggestion_troponin"]))
    return card(ctx, "myocarditis-check", meta["summary_missing"], findings, indicator="warning",
                suggestions=suggestions, selection="any")


def _maintenance_ivig(ctx: RuleContext) -> str | None:
    """Why the patient is on IVIG maintenance: courses at least the gap apart within the lookback,
    or a recurring IVIG order; None on a first course or order."""
    st = ctx.state
    since = st.now - timedelta(days=int(ctx.t("maintenance_lookback_days")))
    gap = int(ctx.t("ivig_maintenance_course_gap_days"))
    starts = [c.start for c in st.ivig_courses if c.start >= since]
    apart = [b for a, b in zip(starts, starts[1:]) if (b - a).days >= gap]
    if len(apart) + 1 >= int(ctx.t("ivig_maintenance_min_courses")) and starts:
        return f"{len(starts)} IVIG courses since {starts[0].date().isoformat()}"
    for m in st.active_meds("drug-ivig"):
        sent = st.original(m) if m.resource_type == "MedicationRequest" and m.status == "active" else None
        if sent is not None and ordered_dose(sent).interval_days >= gap:
            return f"Recurring IVIG order: {m.name}"
    return None


def _maintenance_rituximab(ctx: RuleContext) -> str | None:
    """Rituximab with a dose within the recent window and the first dose longer ago than the
    first-dose window; None on a first course."""
    st = ctx.state
    dates = sorted(d for m in st.meds if m.has("drug-rituximab") and not m.is_draft and (d := m.start or m.date))
    if not dates:
        return None
    recent = st.now - timedelta(days=int(ctx.t("rituximab_monitoring_recent_days")))
    first = st.now - timedelta(days=int(ctx.t("rituximab_monitoring_first_dose_days")))
    if dates[-1] >= recent and dates[0] <= first:
        return f"Rituximab since {dates[0].date().isoformat()}, last dose {dates[-1].date().isoformat()}"
    return None


@rule("immunotherapy-monitoring-due", hooks=PATIENT,
      thresholds=("maintenance_lookback_days", "ivig_maintenance_course_gap_days", "ivig_maintenance_min_courses",
                  "rituximab_monitoring_recent_days", "rituximab_monitoring_first_dose_days",
                  "lab_windows_days.igg_trough", "lab_windows_days.blood_monitoring"),
      valuesets=("lab-igg", "lab-cbc", "lab-chemistry", "drug-ivig", "drug-rituximab"))
def immunotherapy_monitoring_due(ctx: RuleContext) -> Card | None:
    """When the patient is on maintenance immunotherapy (IVIG in two or more courses at least 14
    days apart within 6 months, or a recurring IVIG order: IgG trough within 6 months; rituximab
    with a dose within 12 months and the first dose over 6 months ago: blood count and chemistry
    within 12 months) and a test is due, then (info) offer the orders. Never on a first order."""
    st = ctx.state
    ivig, rituximab = _maintenance_ivig(ctx), _maintenance_rituximab(ctx)
    statuses: list[LabStatus] = []
    if ivig:
        statuses.append(st.lab("igg", ctx.window("igg_trough")))
    if rituximab:
        statuses += [st.lab("cbc", ctx.window("blood_monitoring")), st.lab("chemistry", ctx.window("blood_monitoring"))]
    if not statuses or all(s.usable for s in statuses):
        return None
    therapy = " and ".join(t for t, on in (("IVIG", ivig), ("rituximab", rituximab)) if on)
    return lab_gaps_card(ctx, "immunotherapy-monitoring-due", statuses, [r for r in (ivig, rituximab) if r],
                         therapy=therapy)
