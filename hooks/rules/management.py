"""Grade-based management (patient-view): severe MG, ICI-related moderate MG,
and rituximab for refractory MG (ASCO 2021; MGFA guidance; rituximab
evidence)."""
from __future__ import annotations

from datetime import timedelta

from cds_service.cards import Action, Card, Suggestion

from ..dosing import with_dose
from ..fhir_read import fmt_date
from .common import RuleContext, alternatives, card, fill, lab_order, service_request, texts
from .ivig import iga_deficiency
from .registry import PATIENT, rule

ATC = "http://www.whocc.no/atc"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MEDS = {  # codes as in the value sets drug-ivig, drug-rituximab, drug-pyridostigmine, drug-corticosteroid
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


def _rescue_under_way(ctx: RuleContext) -> str | None:
    """Why no new IVIG / plasma exchange is offered: one is active, drafted or started lately."""
    st = ctx.state
    since = st.now - timedelta(days=int(ctx.t("rescue_recent_days")))
    active = [m for m in st.active_meds("drug-ivig") if m.resource_type == "MedicationRequest"
              and m.status in ("active", "on-hold")]
    if active:
        return f"IVIG order active: {active[0].name}"
    for kind, courses in (("IVIG", st.ivig_courses), ("Plasma exchange", st.plasma_exchange_courses)):
        recent = [c for c in courses if c.start >= since]
        if recent:
            return f"{kind} course started {fmt_date(recent[-1].start)}"
    return None


@rule("mg-severe-management", hooks=PATIENT,
      thresholds=("rescue_recent_days", "ivig_induction_g_per_kg", "ivig_rescue_days", "iga_deficient_mg_dl",
                  "body_size_window_days", "steroid_taper_start_weeks"),
      valuesets=("condition-mg", "condition-mg-crisis", "lab-iga", "condition-iga-deficiency"))
def mg_severe_management(ctx: RuleContext) -> Card | None:
    """When active MG is at current grade 3-4, then critical: ICU-level monitoring; IVIG 2 g/kg
    over 5 days (never a standard product in IgA deficiency) or plasma exchange, offered only
    when neither is active or started within 14 days; corticosteroids with watch for
    steroid-induced worsening; daily neurological review, frequent pulmonary function tests;
    avoid MG-worsening drugs; stop checkpoint inhibitors only when the patient had one."""
    st = ctx.state
    if not (st.mg_active and ctx.severe):
        return None
    meta = texts(ctx.k, "mg-severe-management")
    findings = [st.grade_text()]
    suggestions: list[Suggestion] = []
    ivig: Suggestion | None = None
    under_way = _rescue_under_way(ctx)
    deficient = iga_deficiency(ctx)
    if under_way:
        findings.append(f"{under_way}: no new IVIG or plasma exchange suggested")
    else:
        weight = st.body.weight_kg
        days = int(ctx.t("ivig_rescue_days"))
        if deficient:
            findings.append(f"{deficient}: no standard IVIG suggested (use an IgA-depleted product, or plasma exchange)")
        elif weight is None:
            findings.append(fill(ctx, meta["finding_no_weight"]))
        else:
            daily = ctx.f("ivig_induction_g_per_kg") * weight / days
            findings.append(f"Weight {weight:.1f} kg ({fmt_date(st.body.weight_date)}) -> IVIG {daily:.1f} g/day "
                            f"x {days} days")
            ivig = new_order(ctx, "ivig", "iv", fill(ctx, meta["suggestion"], daily=daily), value=round(daily, 1),
                             unit="g", duration_days=days, text=fill(ctx, meta["order_text"], daily=daily))
            suggestions.append(ivig)
        plex = service_request(ctx, {"text": meta["plex_text"]}, meta["suggestion_plex"])
        suggestions.append(plex)
        iga = st.lab_ever("iga")
        if not deficient and not iga.usable:
            findings.append(iga.describe())
            if iga.status in ("missing", "not-a-result"):
                suggestions.append(lab_order(ctx, "iga", meta["suggestion_iga"]))
    if st.ici_exposure:
        findings.append(meta["finding_ici"])
    result = card(ctx, "mg-severe-management", meta["summary"].format(grade=st.grade), findings,
                  why_key="why_ici" if st.ici_exposure else "why", suggestions=suggestions, selection="any")
    return alternatives(ctx, result, "mg-severe-management", ivig, plex) if ivig else result


@rule("mg-moderate-management", hooks=PATIENT,
      thresholds=("pyridostigmine_start_mg", "pyridostigmine_start_per_day", "pyridostigmine_ir_max_mg_per_dose",
                  "pyridostigmine_ir_max_per_day", "prednisone_mg_per_kg_per_day", "prednisone_round_mg",
                  "body_size_window_days", "steroid_taper_start_weeks"),
      valuesets=("drug-pyridostigmine", "drug-corticosteroid"))
def mg_moderate_management(ctx: RuleContext) -> Card | None:
    """When ICI-related MG is at grade 2, then warn: hold the ICI; pyridostigmine 30 mg three times
    daily titrated to at most 120 mg four times daily; prednisone 0.5 mg/kg/day (computed) tapered
    from 3-4 weeks; consider inpatient care."""
    st = ctx.state
    if not (st.mg_active and st.ici_related and st.grade == 2):
        return None
    meta = texts(ctx.k, "mg-moderate-management")
    findings = [st.grade_text()]
    suggestions = []
    on_pyridostigmine = st.active_meds("drug-pyridostigmine")
    if on_pyridostigmine:
        findings.append(fill(ctx, meta["finding_pyridostigmine"], name=on_pyridostigmine[0].name))
    else:
        start, per_day = ctx.f("pyridostigmine_start_mg"), int(ctx.t("pyridostigmine_start_per_day"))
        suggestions.append(new_order(ctx, "pyridostigmine", "po", fill(ctx, meta["suggestion_pyridostigmine"]),
                                     value=start, unit="mg", frequency=per_day,
                                     text=fill(ctx, meta["order_text_pyridostigmine"])))
    steroids = st.active_meds("drug-corticosteroid")
    weight = st.body.weight_kg
    if steroids:
        findings.append(f"On a corticosteroid: {steroids[0].name}")
    elif weight is None:
        findings.append(fill(ctx, meta["finding_no_weight"]))
    else:
        exact, step = ctx.f("prednisone_mg_per_kg_per_day") * weight, ctx.f("prednisone_round_mg")
        dose = max(step, round(exact / step) * step)
        findings.append(fill(ctx, meta["finding_prednisone"], weight=weight, date=fmt_date(st.body.weight_date),
                             exact=exact, dose=dose))
        suggestions.append(new_order(ctx, "prednisone", "po", meta["suggestion_prednisone"].format(dose=dose),
                                     value=dose, unit="mg", text=fill(ctx, meta["order_text_prednisone"], dose=dose)))
    findings.append(meta["finding_ici"])
    return card(ctx, "mg-moderate-management", fill(ctx, meta["summary"]), findings, suggestions=suggestions,
                selection="any")


@rule("rituximab-consider", hooks=PATIENT,
      thresholds=("refractory_days_after_rescue", "recent_immunotherapy_days", "rituximab_mg_per_m2",
                  "rituximab_flat_mg", "rituximab_flat_doses", "rituximab_flat_interval_days", "rituximab_bsa_doses",
                  "rituximab_bsa_interval_days"),
      valuesets=("drug-rituximab", "drug-ivig", "procedure-plasma-exchange"))
def rituximab_consider(ctx: RuleContext) -> Card | None:
    """When active MG is still at grade 3-4 (evidence dated after the course started) 14 days or
    more after an IVIG course or plasma exchange started, and no rituximab is on file, then warn:
    consider rituximab (regimens with computed doses)."""
    st = ctx.state
    if not (st.mg_active and ctx.severe) or st.active_meds("drug-rituximab") or ctx.drafts_of("drug-rituximab"):
        return None
    gap = timedelta(days=int(ctx.t("refractory_days_after_rescue")))
    horizon = st.now - timedelta(days=int(ctx.t("recent_immunotherapy_days")))
    rescues = sorted([(c.start, "IVIG") for c in st.ivig_courses] +
                     [(c.start, "plasma exchange") for c in st.plasma_exchange_courses], reverse=True)
    for start, kind in rescues:  # noqa: B007 (kind is read after the loop)
        if not horizon <= start <= st.now - gap:
            continue
        later = [e for e in st.grade_evidence if e.grade >= 3 and e.date and e.date > start]
        if later:
            break
    else:
        return None
    meta = texts(ctx.k, "rituximab-consider")
    days = (st.now - start).days
    findings = [f"{kind} started {fmt_date(start)} ({days} days ago)",
                f"Still grade {later[0].grade} on {fmt_date(later[0].date)}: {later[0].description}", st.grade_text()]
    flat = ctx.f("rituximab_flat_mg")
    regimen_a = new_order(ctx, "rituximab", "iv", fill(ctx, meta["suggestion_flat"]), value=flat, unit="mg",
                          frequency=1, period=ctx.f("rituximab_flat_interval_days"),
                          count=int(ctx.t("rituximab_flat_doses")), text=fill(ctx, meta["order_text_flat"]))
    suggestions = [regimen_a]
    bsa = st.body.bsa_m2
    if bsa:
        dose = round(ctx.f("rituximab_mg_per_m2") * bsa)
        findings.append(fill(ctx, meta["finding_bsa"], bsa=bsa, source=st.body.bsa_source, dose=dose))
        suggestions.append(new_order(ctx, "rituximab", "iv", fill(ctx, meta["suggestion_bsa"], dose=dose),
                                     value=float(dose), unit="mg", frequency=1,
                                     period=ctx.f("rituximab_bsa_interval_days"), count=int(ctx.t("rituximab_bsa_doses")),
                                     text=fill(ctx, meta["order_text_bsa"], dose=dose)))
    else:
        findings.append(fill(ctx, meta["finding_no_bsa"]))
    summary = meta["summary"].format(grade=st.grade, days=days, rescue=kind)
    result = card(ctx, "rituximab-consider", summary, findings, suggestions=suggestions)
    return alternatives(ctx, result, "rituximab-consider", regimen_a, *suggestions[1:]) if len(suggestions) > 1 else result
