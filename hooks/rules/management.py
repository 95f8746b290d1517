"""Grade-based management (patient-view): severe and moderate MG, refractory
MG and rituximab (seed: Treatment Algorithm by Disease Severity; Rituximab as
Primary Therapy in Refractory Disease)."""
from __future__ import annotations

from datetime import datetime, timedelta

from cds_service.cards import Action, Card, Suggestion

from ..dosing import with_dose
from ..fhir_read import fmt_date
from .common import RuleContext, card, texts

ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MEDS = {  # codes from shared/clinical/codes.csv
    "ivig": {"coding": [{"system": ATC, "code": "J06BA02",
                         "display": "immunoglobulins, normal human, for intravascular adm."}],
             "text": "Immune globulin (human), intravenous"},
    "rituximab": {"coding": [{"system": RXNORM, "code": "121191", "display": "rituximab"},
                             {"system": ATC, "code": "L01FA01", "display": "rituximab"}], "text": "Rituximab"},
    "pyridostigmine": {"coding": [{"system": ATC, "code": "N07AA02", "display": "pyridostigmine"}],
                       "text": "Pyridostigmine bromide"},
    "prednisone": {"coding": [{"system": ATC, "code": "H02AB07", "display": "prednisone"}], "text": "Prednisone"},
}
ROUTES = {"iv": {"text": "Intravenous"}, "po": {"text": "Oral"}}


def new_order(ctx: RuleContext, med: str, route: str, label: str, **dose) -> Suggestion:
    base = {"resourceType": "MedicationRequest", "status": "draft", "intent": "order",
            "medicationCodeableConcept": MEDS[med], "subject": {"reference": ctx.patient_ref},
            "dosageInstruction": [{"route": ROUTES[route]}]}
    resource = with_dose(base, **dose)
    return Suggestion(label=label, actions=[Action(type="create", description=label, resource=resource)])


def course_starts(dates: list[datetime], gap_days: int = 7) -> list[datetime]:
    """First dates of treatment courses: doses within ``gap_days`` belong to one course."""
    starts: list[datetime] = []
    last = None
    for d in sorted(dates):
        if last is None or (d - last).days > gap_days:
            starts.append(d)
        last = d
    return starts


def mg_severe_management(ctx: RuleContext) -> Card | None:
    st = ctx.state
    if not ctx.severe:
        return None
    meta = texts(ctx.k, "mg-severe-management")
    findings = [st.grade_text()]
    weight = st.body.weight_kg
    suggestions = []
    recent_ivig = [d for d in st.ivig_dates if d >= st.now - timedelta(days=30)]
    active_ivig = st.active_meds("drug-ivig")
    if active_ivig or recent_ivig:
        when = fmt_date(recent_ivig[-1]) if recent_ivig else "active order"
        findings.append(f"IVIG already given or ordered ({when}): no new course suggested")
    elif weight is None:
        findings.append("No weight in the last 90 days: IVIG dose (0.4 g/kg/day) cannot be computed")
    else:
        daily = float(ctx.t("ivig_g_per_kg_per_day")) * weight
        days = int(ctx.t("ivig_course_days"))
        findings.append(f"weight {weight:.1f} kg ({fmt_date(st.body.weight_date)}) -> IVIG {daily:.1f} g/day x {days} days")
        suggestions.append(new_order(ctx, "ivig", "iv", meta["suggestion"].format(daily=daily),
                                     value=round(daily, 1), unit="g", duration_days=days,
                                     text=f"{daily:.1f} g IV once daily for {days} days (0.4 g/kg/day)"))
    if st.ici_related:
        findings.append("On a checkpoint inhibitor: permanently discontinue (see the checkpoint inhibitor card)")
    return card(ctx, "mg-severe-management", meta["summary"].format(grade=st.grade), findings,
                suggestions=suggestions)


def mg_moderate_management(ctx: RuleContext) -> Card | None:
    st = ctx.state
    if st.grade != 2:
        return None
    meta = texts(ctx.k, "mg-moderate-management")
    findings = [st.grade_text()]
    suggestions = []
    on_pyridostigmine = st.active_meds("drug-pyridostigmine")
    if on_pyridostigmine:
        findings.append(f"On pyridostigmine: {on_pyridostigmine[0].name} (titrate to a maximum of 120 mg four times daily)")
    else:
        start = float(ctx.t("pyridostigmine_start_mg"))
        suggestions.append(new_order(ctx, "pyridostigmine", "po", meta["suggestion_pyridostigmine"], value=start,
                                     unit="mg", frequency=3, text=f"{start:.0f} mg PO three times daily; "
                                     "titrate to a maximum of 120 mg four times daily"))
    steroids = st.active_meds("drug-corticosteroid")
    weight = st.body.weight_kg
    if steroids:
        findings.append(f"On a corticosteroid: {steroids[0].name}")
    elif weight is None:
        findings.append("No weight in the last 90 days: prednisone 0.5 mg/kg/day cannot be computed")
    else:
        exact = float(ctx.t("prednisone_mg_per_kg_per_day")) * weight
        dose = max(5.0, round(exact / 5) * 5)
        findings.append(f"weight {weight:.1f} kg ({fmt_date(st.body.weight_date)}) -> prednisone 0.5 mg/kg/day = "
                        f"{exact:.0f} mg, rounded to {dose:.0f} mg daily")
        suggestions.append(new_order(ctx, "prednisone", "po", meta["suggestion_prednisone"].format(dose=dose),
                                     value=dose, unit="mg", text=f"{dose:.0f} mg PO once daily (0.5 mg/kg/day)"))
    if st.ici_related:
        findings.append("On a checkpoint inhibitor: hold it (see the checkpoint inhibitor card)")
    return card(ctx, "mg-moderate-management", meta["summary"], findings, suggestions=suggestions, selection="any")


def rituximab_consider(ctx: RuleContext) -> Card | None:
    st = ctx.state
    if not ctx.severe or st.active_meds("drug-rituximab") or ctx.drafts_of("drug-rituximab"):
        return None
    gap = timedelta(days=int(ctx.t("refractory_days_after_rescue")))
    horizon = st.now - timedelta(days=int(ctx.t("recent_immunotherapy_days")))
    rescues = [(d, "IVIG") for d in course_starts(st.ivig_dates)] + \
              [(d, "plasma exchange") for d in course_starts(st.plasma_exchange_dates)]
    rescues = sorted((r for r in rescues if horizon <= r[0] <= st.now - gap), reverse=True)
    for start, kind in rescues:
        later = [e for e in st.grade_evidence if e.grade >= 3 and e.date and e.date >= start + gap]
        if later:
            break
    else:
        return None
    meta = texts(ctx.k, "rituximab-consider")
    days = (st.now - start).days
    findings = [f"{kind} started {fmt_date(start)} ({days} days ago)",
                f"Still grade {later[0].grade} on {fmt_date(later[0].date)}: {later[0].description}", st.grade_text()]
    suggestions = [new_order(ctx, "rituximab", "iv", meta["suggestion_flat"], value=1000.0, unit="mg", frequency=1,
                             period=14, count=2, text="rituximab 1000 mg IV on day 1 and day 15")]
    bsa = st.body.bsa_m2
    if bsa:
        dose = round(float(ctx.t("rituximab_mg_per_m2")) * bsa)
        findings.append(f"BSA {bsa:.2f} m2 ({st.body.bsa_source}) -> 375 mg/m2 = {dose:.0f} mg")
        suggestions.append(new_order(ctx, "rituximab", "iv", meta["suggestion_bsa"].format(dose=dose), value=float(dose),
                                     unit="mg", frequency=1, period=1, period_unit="wk", count=4,
                                     text=f"rituximab {dose:.0f} mg IV once weekly for 4 weeks (375 mg/m2)"))
    else:
        findings.append("No BSA (weight and height): only the 1000 mg regimen is computed")
    summary = meta["summary"].format(grade=st.grade, days=days, rescue=kind)
    return card(ctx, "rituximab-consider", summary, findings, suggestions=suggestions)
