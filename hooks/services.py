"""The three MG CDS services (stable ids, hooks and prefetch keys: see the
design README), each a pure function from HookInput to CDSResponse."""
from __future__ import annotations

from cds_service.cards import CDSResponse
from cds_service.prefetch import DRAFT_MEDICATIONS, MEDICATION_REF
from cds_service.profiles import TopicCodes
from cds_service.service import HookInput, ServiceDefinition

from .builder import build_state, relevant_drafts
from .fhir_model import Condition, Medication, MedicationRequest, Observation
from .knowledge import load
from .rules import ORDER_RULES, PATIENT_RULES, run_rules
from .rules.common import RuleContext
from .state import PatientState

P = "{{context.patientId}}"
LOINC = "http://loinc.org"
# Value sets of the results rules read by LOINC code: the labs, and the body size a dose is checked against.
LABS_PREFETCHED = ("lab-", "vital-")


def lab_codes() -> list[str]:
    """The LOINC codes of the lab and body-size value sets, in value-set order, each once."""
    codes: dict[str, None] = {}
    for vid, vs in sorted(load().valuesets.items()):
        if vid.startswith(LABS_PREFETCHED):
            codes.update((code, None) for system, code in vs.codes if system == LOINC)
    return list(codes)


# A prefetch URL every EHR, server and proxy accepts: well under 2,000 characters with a 64-character
# patient id and a long base URL (the labs search is the long one).
URL_BUDGET = 1800
OBSERVATION_STATUS = "status=registered,preliminary,final,amended,corrected"


def labs_query(codes: list[str]) -> str:
    """The Observation search for these LOINC codes: each qualified by its system while the URL stays
    within URL_BUDGET; past it, the bare codes (a FHIR token search without a system matches the code
    in any system: what it brings beside LOINC results is classified like the rest, by system and code)."""
    def query(tokens: list[str]) -> str:
        return f"Observation?patient={P}&{OBSERVATION_STATUS}&code={','.join(tokens)}&_sort=-date&_count=500"
    qualified = query([f"{LOINC}|{code}" for code in codes])
    encoded = len(qualified.replace("|", "%7C")) - len(P) + 64 + len("https://fhir.example-ehr.org/api/FHIR/R4/")
    return qualified if encoded <= URL_BUDGET else query(codes)


PREFETCH = {
    "patient": f"Patient/{P}",
    "conditions": f"Condition?patient={P}&verification-status:not=entered-in-error&_count=200",
    "observations": f"Observation?patient={P}&{OBSERVATION_STATUS}&_sort=-date&_count=500",
    # every result a rule reads by LOINC code, at any date, however many other Observations the chart has
    # (the search above is the newest 500: it holds the locally coded results matched by name)
    "labs": labs_query(lab_codes()),
    # _include brings referenced Medication resources into the same Bundle (medicationReference)
    "medications": f"MedicationRequest?patient={P}&status=active,on-hold,draft,completed"
                   f"&_include=MedicationRequest:medication&_count=200",
    "administrations": f"MedicationAdministration?patient={P}&status=in-progress,on-hold,completed"
                       f"&_include=MedicationAdministration:medication&_count=200",
    "procedures": f"Procedure?patient={P}&status=preparation,in-progress,completed&_count=100",
    "serviceRequests": f"ServiceRequest?patient={P}&status=draft,active,on-hold&_count=100",
    "allergies": f"AllergyIntolerance?patient={P}&_count=200",
}
# A subset of its type's data: it adds results, but only the full search proves one absent.
PARTIAL = ("labs",)
# Prefetch keys decoded straight into typed structs (hooks.fhir_model): the bulk of a chart.
PREFETCH_MODELS: dict[str, type | tuple[type, ...]] = {"observations": Observation, "labs": Observation, "conditions": Condition,
                   "medications": (MedicationRequest, Medication)}
REQUIRED = ("patient", "conditions")
# hookVersion of patient-view, order-select and order-sign in the CDS Hooks library (HL7/cds-hooks-library,
# input/pagecontent/<hook>.md: "hookVersion | 1.0")
HOOK_VERSION = "1.0"
USAGE = ("Send the prefetch keys above (FHIR R4), or fhirServer with fhirAuthorization so that absent keys "
         "can be fetched. The patient and their Conditions are required; without Observations the lab rules "
         "say that lab data was unavailable.")


def patient_state(hook_input: HookInput) -> PatientState:
    req = hook_input.request
    return build_state(hook_input.resources, req.patient_id, hook_input.now, drafts=req.draft_resources(),
                       unavailable=hook_input.unavailable, notes=hook_input.notes + hook_input.resources.ignored,
                       incomplete=hook_input.incomplete)


def explain(hook_input: HookInput) -> dict:
    return {**patient_state(hook_input).explain(), "prefetch": hook_input.prefetch_summary()}


def _context(hook_input: HookInput, state: PatientState) -> RuleContext:
    hook = hook_input.request.hook
    drafts, procedures = state.drafts, state.draft_procedures
    if hook == "order-select":
        chosen = set(hook_input.context.get("selections") or [])
        drafts = [d for d in drafts if d.reference in chosen]
        procedures = [p for p in procedures if p.reference in chosen]
    return RuleContext(state=state, hook=hook, drafts=drafts, draft_procedures=procedures)


def _selected_drafts(hook_input: HookInput) -> list[dict]:
    drafts = hook_input.request.draft_resources()
    if hook_input.request.hook == "order-select":
        chosen = set(hook_input.context.get("selections") or [])
        drafts = [d for d in drafts if f"{d.get('resourceType')}/{d.get('id')}" in chosen]
    return drafts


def _draft_medications(hook_input: HookInput) -> dict[str, dict]:
    """"Medication/id" -> the Medications sent in draftOrders or read from fhirServer for a draft."""
    fetched = hook_input.prefetched.get(DRAFT_MEDICATIONS) or {}
    medications = hook_input.request.draft_medications() + [e["resource"] for e in fetched.get("entry", ())]
    return {f"Medication/{m.get('id')}": m for m in medications}


def _as_judged(draft: dict, medications: dict[str, dict]) -> dict | None:
    """A drafted order as the chart-free check reads it: one naming a draft Medication by reference
    carries that Medication's code; None when its medication cannot be told without the chart (a
    reference to a Medication sent nowhere else, without a display)."""
    reference = draft.get("medicationReference") if draft.get("resourceType") == "MedicationRequest" else None
    if not isinstance(reference, dict):
        return draft
    ref = reference.get("reference")
    found = MEDICATION_REF.search(ref) if isinstance(ref, str) else None
    medication = medications.get(found.group(1)) if found else None
    if isinstance(medication, dict) and isinstance(medication.get("code"), dict):
        return {**draft, "medicationCodeableConcept": medication["code"]}
    return draft if isinstance(reference.get("display"), str) else None


def _quiet_order(hook_input: HookInput) -> bool:
    """Whether no selected draft is anything an MG rule reads, judged without reading the chart (most
    orders are not). A draft whose medication cannot be told so is read with the chart."""
    medications = _draft_medications(hook_input)
    judged = [_as_judged(d, medications) for d in _selected_drafts(hook_input)]
    drafts = [d for d in judged if d is not None]
    if len(drafts) < len(judged):
        return False
    return not relevant_drafts(drafts, hook_input.request.patient_id, hook_input.now)


def _evaluate(hook_input: HookInput) -> CDSResponse:
    req = hook_input.request
    if req.hook != "patient-view" and _quiet_order(hook_input):
        return CDSResponse()  # an order no MG rule reads: quiet, without reading the chart
    state = patient_state(hook_input)
    if not state.mg_present:
        return CDSResponse()
    ctx = _context(hook_input, state)
    rules = PATIENT_RULES if ctx.hook == "patient-view" else ORDER_RULES
    if ctx.hook != "patient-view" and not (ctx.drafts or ctx.draft_procedures):
        return CDSResponse()
    return CDSResponse(cards=run_rules(ctx, rules))


# Rule id -> the static alphanumeric source.topic.code of the Epic client profile (each rule's
# epic_topic_code in knowledge/rules.json).
EPIC_TOPICS = TopicCodes(system="urn:mg-cds:epic-topic",
                         codes={rule_id: texts["epic_topic_code"] for rule_id, texts in load().rules["rules"].items()})


def _service(id: str, hook: str, title: str, description: str) -> ServiceDefinition:
    return ServiceDefinition(id=id, hook=hook, title=title, description=description, prefetch=PREFETCH,
                             evaluate=_evaluate, required_prefetch=REQUIRED, partial_prefetch=PARTIAL,
                             usage_requirements=USAGE, hook_version=HOOK_VERSION, explain=explain,
                             prefetch_models=PREFETCH_MODELS, topic_codes=EPIC_TOPICS)


SERVICES = [
    _service("mg-order-select", "order-select", "MG order advice (IVIG, rituximab, ICI, antibiotics)",
             "Checks the selected draft orders of a myasthenia gravis patient: IVIG dose and IgA, rituximab "
             "screening and dose, checkpoint inhibitors, pyridostigmine dose, MG-worsening drugs."),
    _service("mg-order-sign", "order-sign", "MG order check at signing",
             "The order checks over all draft orders of a myasthenia gravis patient, plus cross-order checks "
             "(IVIG with plasma exchange; checkpoint inhibitor with MG treatment)."),
    _service("mg-patient-view", "patient-view", "MG severity, management and monitoring",
             "Grades myasthenia gravis from the chart (grade 2/3/4) and advises management, checkpoint inhibitor "
             "hold/stop, refractory disease, workup and monitoring gaps and MG-worsening drugs."),
]
