"""Builds a PatientState from one patient's FHIR R4 resources. Pure: no HTTP,
no clock of its own.

Resources are classified on their code fields first (one dict hit per coding
set, cached); only those a rule will read are validated with
``fhir.resources.R4B``, in the elements rules read (``fhir_model.projection``),
and a resource that cannot be read is skipped with a data-quality note.
Every resource is read as a struct of ``hooks.fhir_model``: decoded so, or
converted from plain JSON resource by resource (``hooks.typed``). Drafted orders
are read so too; the rules read their doses and build suggestions from each draft
as it was sent (``MedEntry.resource``)."""
from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

from .classify import Match
from .fhir_model import (
    AllergyIntolerance,
    CodeableConcept,
    Condition,
    Medication,
    Observation,
    Procedure,
    Reference,
    ServiceRequest,
    as_concept,
)
from .fhir_read import (
    as_list,
    cc_label,
    cc_text,
    codings,
    condition_date,
    dosages,
    fmt_date,
    later,
    medication_period,
    observation_date,
    parse_datetime,
    performed_date,
    period_bounds,
    reference_tail,
    subject_patient,
    supply_end,
)
from .knowledge import HERE, Knowledge, load
from .state import BODY_TITLES, AllergyEntry, Course, GradeEvidence, LabResult, MedEntry, PatientState, Reading, Resources
from .typed import TypedResources
from .values import interpretation, read_value

LAB_SETS = ("lab-iga", "lab-igg", "lab-igm", "lab-hbsag", "lab-anti-hbc", "lab-hcv-ab", "lab-tb", "lab-achr-ab",
            "lab-striational-ab", "lab-ck", "lab-aldolase", "lab-esr", "lab-crp", "lab-fvc", "lab-nif",
            "lab-troponin", "lab-cbc", "lab-creatinine", "lab-egfr", "lab-chemistry", "lab-anti-iga",
            "vital-weight", "vital-height", "vital-bsa", "mg-grade", "mgfa-class", "condition-dysphagia")
CONDITION_SETS = ("condition-mg", "condition-mg-crisis", "condition-iga-deficiency", "condition-hepatitis-b",
                  "condition-dysphagia")
DRUG_SETS = ("drug-ivig", "drug-scig", "drug-immune-globulin-generic", "drug-rituximab", "drug-ici",
             "drug-pyridostigmine", "drug-corticosteroid", "drug-beta-blocker", "drug-magnesium-iv",
             "drug-fluoroquinolone", "drug-aminoglycoside", "drug-macrolide", "drug-telithromycin", "drug-quinine",
             "drug-botulinum-toxin", "drug-hydroxychloroquine", "drug-penicillamine", "drug-procainamide",
             "drug-polymyxin", "drug-neuromuscular-blocker")
PROCEDURE_SETS = ("procedure-plasma-exchange", "procedure-mechanical-ventilation")
IGA_DEPLETED = "drug-ivig-iga-depleted"  # IVIG products with their label IgA content (read when present)
CHRONIC_STATUS = {"active", "on-hold", "in-progress", "intended"}  # still taken: its span reaches now
# Observations that are grade evidence are validated as they are read; other
# results only when a rule reads them (PatientState.valid).
GRADE_SOURCES = {"mg-grade", "mgfa-class", "condition-dysphagia", "lab-fvc", "lab-nif"}
ROUTE_DEPENDENT = {"drug-immune-globulin-generic", "drug-scig"}
READ_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)  # msgspec's too
IGNORED_STATUS = {"entered-in-error", "cancelled", "revoked"}
PENDING_STATUS = {"registered", "preliminary"}
DONE_PROCEDURE = {"in-progress", "completed", "stopped"}
ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
ANY_STATUS = {"condition-hepatitis-b", "condition-iga-deficiency"}  # kept at any clinical status
INACTIVE_ALLERGY = {"inactive", "resolved"}
ANAPHYLAXIS = re.compile(r"anaphyla")
# MGFA class -> ASCO grade in ICI-related MG (the ASCO table: I-II 2, III-IV 3, V 4); outside it only
# V (intubation) and IVb (feeding tube) grade, and IVa only with bulbar or respiratory evidence.
MGFA_ICI = {"i": 2, "ii": 2, "iii": 3, "iv": 3, "v": 4}
MGFA_ANY = {"v": 4, "ivb": 3}
BULBAR_OR_RESPIRATORY = {"dysphagia", "respiratory", "crisis", "ventilation"}
# a dysphagia attributed to something else than MG ("dysphagia due to oesophageal cancer")
OTHER_CAUSE = re.compile(r"\b(?:due to|secondary to|following|caused by|after|post)\b(?!.*myasthen)(.*)")
# "worse after meals" says when, not why
WHEN_NOT_WHY = re.compile(r"^\W*(?:meals?|eating|food|drinking|swallowing)\b")
DUE_TO = "http://hl7.org/fhir/StructureDefinition/condition-dueTo"
MGFA_RE = re.compile(r"\b(?:class\s*)?(v|iv|iii|ii|i)([ab])?\b")
GRADE_RE = re.compile(r"\b(?:grade\s*)?([1-4])\b")
IV_ROUTE = re.compile(r"intravenous|\biv\b|i\.v\.|infusion|injection")
SC_ROUTE = re.compile(r"subcutaneous|\bsc\b|\bsubq\b|s\.c\.|subcut")


class _Builder:
    def __init__(self, resources: Resources, patient_id: str, now: datetime, knowledge: Knowledge):
        self.k = knowledge
        self.state = PatientState(patient_id=patient_id, now=now, knowledge=knowledge)
        self.res = self.state.resources = TypedResources(resources, self.state.data_quality)
        self.labs = knowledge.classifier(LAB_SETS)
        self.conditions = knowledge.classifier(CONDITION_SETS)
        self.drugs = knowledge.classifier(DRUG_SETS)
        self.procedures = knowledge.classifier(PROCEDURE_SETS)
        self.own_reference = f"Patient/{patient_id}"
        self.other_patient = 0
        self._seen: set[tuple[str, str]] = set()
        self._verdicts: dict[int, tuple[tuple[Match, ...], tuple[str, ...] | None, str]] = {}
        self.grade_window = timedelta(days=int(knowledge.threshold("grade_window_days")))
        self._fvc: list[tuple[float | None, float | None, datetime | None, str | None, str]] = []  # mL or mL/kg
        # grade evidence at any date: (evidence, current = in the grade window, kind). A kind's latest
        # current reading grades now (grade 0: a reading that shows no severity, e.g. FVC 40 mL/kg);
        # kind None: each one counts (a crisis Condition, a ventilation)
        self._all_evidence: list[tuple[GradeEvidence, bool, str | None]] = []
        self._mgfa: list[tuple[datetime, str, str | None, bool]] = []  # (date, class, resource id, current)
        self._mg_dates: list[datetime] = []
        self._ici_active = False
        self._ici_doses: list[tuple[datetime, datetime]] = []  # (start, end) of each ICI dose or order
        self._ici_given: list[datetime] = []  # start of each ICI given: administered, or a completed order
        self._taken_meds: list[tuple[Any, str | None, Sequence[str]]] = []  # non-draft: (resource, status, classes)
        # drug class -> (its spans taken, merged; whether an undated order of it is still taken)
        self._merged: dict[str, tuple[list[tuple[datetime, datetime]], bool]] = {}
        self._ivig: list[tuple[datetime, datetime, str | None]] = []
        self._plex: list[tuple[datetime, datetime, str | None]] = []
        self.depleted = knowledge.classifier((IGA_DEPLETED,)) if IGA_DEPLETED in knowledge.valuesets else None
        self._days: dict[str, timedelta] = {}
        self._draft_medications: dict[str, Any] = {}  # "Medication/id" -> a Medication sent among the drafts
        self.unread_medications = 0  # medications whose drug could not be found out (no code, name or display)
        # value set id -> (lab concept, the unit its values are read in)
        self._concepts = {vid: (vid[4:] if vid.startswith("lab-") else vid, knowledge.vs(vid).options.get("unit"))
                          for vid in LAB_SETS}

    # --- plumbing
    def _read_all(self, read, resources: Iterable[Any], where: str = "") -> None:
        """The hot loop: every resource of the chart passes here once, a struct. Each reader
        classifies first (one cached lookup, where most of a chart stops) and checks status and
        patient only for what it keeps. One resource that cannot be read is skipped with a note;
        it never fails the request."""
        for resource in resources:
            try:
                read(resource)
            except READ_ERRORS as exc:
                rid = f"{where}{resource.resourceType}/{resource.id or '?'}"
                self.state.data_quality.append(f"{rid} could not be read ({type(exc).__name__}); skipped")

    def _usable(self, resource: Any) -> bool:
        """Whether a classified resource is kept: not entered in error or refuted, about this
        patient, and not a duplicate (the same type and id under two prefetch keys)."""
        rtype, rid, status, subject = resource.resourceType, resource.id, resource.status, resource.subject
        verification = getattr(resource, "verificationStatus", None)
        reference = subject.reference if subject is not None else None
        if isinstance(rid, str):
            seen = self._seen
            size = len(seen)
            seen.add((rtype, rid))
            if len(seen) == size:
                return False
        if isinstance(status, str) and status in IGNORED_STATUS:
            return False
        if verification and any(code in ("entered-in-error", "refuted") for _, code, _ in codings(verification)):
            return False
        if reference == self.own_reference:
            return True  # the common case, without parsing the reference
        pid = subject_patient(resource)
        if pid is not None and pid != self.state.patient_id:
            self.other_patient += 1
            return False
        return True

    def _valid(self, resource: Any) -> bool:
        return self.state.checked(resource)

    def _in_grade_window(self, dt: datetime | None, undated_counts: bool) -> bool:
        if dt is None:
            return undated_counts
        return self.state.now - self.grade_window <= dt <= self.state.now + timedelta(days=1)

    def _evidence(self, grade: int, source: str, description: str, dt: datetime | None, rid: str | None,
                  current: bool = True, kind: str | None = None) -> None:
        """Grade evidence at any date (for the history of ICI-related MG); ``current`` when it is
        in the grade window; of a ``kind``, only the latest current reading grades now."""
        self._all_evidence.append((GradeEvidence(grade, source, description, dt, rid), current, kind))

    def days(self, name: str) -> timedelta:
        """A window in days from thresholds.json, read once per build."""
        found = self._days.get(name)
        if found is None:
            found = self._days[name] = timedelta(days=float(self.k.threshold(name)))
        return found

    # --- build
    def build(self, drafts: list[dict]) -> PatientState:
        readers = (("Condition", self._condition), ("Observation", self._observation),
                   ("ServiceRequest", self._pending_order), ("Procedure", self._procedure),
                   ("MedicationRequest", self._medication), ("MedicationAdministration", self._medication),
                   ("MedicationStatement", self._medication), ("AllergyIntolerance", self._allergy))
        for rtype, read in readers:
            self._read_all(read, self.res.of_type(rtype))
        self.read_drafts(drafts)
        self._sort()
        self._body_size()
        self._respiratory()
        self._finish()
        return self.state

    # --- conditions
    def _condition(self, cond: Condition) -> None:
        """An MG, crisis, dysphagia, IgA-deficiency or hepatitis B Condition. A resolved or inactive
        MG Condition keeps MG present (safety rules) but not active; inactive crisis and dysphagia
        Conditions are history (grade 3-4 in ICI-related MG never lapses), not current grade."""
        matches = self.conditions.all(cond.code)
        if not matches or not self._usable(cond):
            return
        clinical = [c for _, c, _ in codings(cond.clinicalStatus)]
        active = not clinical or any(c in ACTIVE_CONDITION for c in clinical)
        sets = {m.valueset for m in matches}
        if not (active or sets & ({"condition-mg", "condition-mg-crisis", "condition-dysphagia"} | ANY_STATUS)):
            return
        if not self._valid(cond):
            if "condition-mg" in sets:  # an MG diagnosis with a bad element still is one: the safety rules need it
                self.state.mg_present = True
                self.state.mg_active = self.state.mg_active or active
                self.state.mg_evidence.append(f"Condition: {cc_label(cond.code)} (not valid FHIR R4: read for MG "
                                              "presence only, no date)")
            return
        name, dt, rid = cc_label(cond.code), condition_date(cond), cond.id
        by = " (matched by name)" if any(m.by == "text" for m in matches) else ""
        for m in matches:
            if active:
                self.state.conditions.setdefault(m.valueset, []).append(f"{name}{by}")
            elif m.valueset in ANY_STATUS:  # a resolved hepatitis B still matters (reactivation): status shown
                self.state.conditions.setdefault(m.valueset, []).append(f"{name}{by} ({', '.join(clinical)})")
        if "condition-mg" in sets or "condition-mg-crisis" in sets:
            self.state.mg_present = True
            self.state.mg_active = self.state.mg_active or active
            self.state.mg_evidence.append(f"Condition: {name}{by}{'' if active else ' (not active)'}")
            onset = (parse_datetime(cond.onsetDateTime) or period_bounds(cond.onsetPeriod)[0]
                     or parse_datetime(cond.recordedDate))
            if onset:
                self._mg_dates.append(onset)
        current = active and self._in_grade_window(dt, undated_counts=True)
        if "condition-mg-crisis" in sets:
            self._evidence(4, "crisis", f"myasthenic crisis ({name})", dt, rid, current)
        if "condition-dysphagia" in sets:
            if self._other_cause(cond.code, cond):
                self.state.grade_notes.append(f"{name} ({fmt_date(dt)}) is attributed to another cause: not MG "
                                              "grade evidence.")
            else:
                self._evidence(3, "dysphagia", f"dysphagia ({name})", dt, rid, current)
        if "condition-mg" in sets and cond.severity:  # reported, never graded (rules.md v2)
            codes = self.k.vs("severity").codes  # a bare code is shown with its display
            label = next((codes[(s, c)] for s, c, d in codings(cond.severity) if not d and (s, c) in codes), None)
            self.state.severity.append(f"{name}: severity {label or cc_label(cond.severity)} ({fmt_date(dt)})")

    def _other_cause(self, code: CodeableConcept | None, resource: Condition | None) -> bool:
        """A dysphagia coded to another cause: its name says due to / following something other
        than MG, or a condition-dueTo extension (plain JSON in the model) names something that is not MG."""
        named = OTHER_CAUSE.search(cc_text(code).lower())
        if named and not WHEN_NOT_WHY.match(named.group(1)) and not self._mg_cause(CodeableConcept(text=named.group(1))):
            return True
        for ext in as_list(resource.extension if resource is not None else None):
            if not isinstance(ext, dict) or ext.get("url") != DUE_TO:
                continue
            cause = as_concept(ext.get("valueCodeableConcept"))
            if cause is None and isinstance(ext.get("valueReference"), dict):
                ref = ext["valueReference"]
                target = self.res.resolve(reference_tail(ref.get("reference")) or "")
                cause = target.code if target is not None else CodeableConcept(text=ref.get("display"))
            if (cc_text(cause) or any(codings(cause))) and not self._mg_cause(cause):  # an unreadable cause is none
                return True
        return False

    def _mg_cause(self, cause: CodeableConcept | None) -> bool:
        """A cause that is MG, a crisis, or a checkpoint inhibitor (ICI-related MG)."""
        return bool({m.valueset for m in self.conditions.all(cause)} & {"condition-mg", "condition-mg-crisis"}
                    or any(m.valueset == "drug-ici" for m in self.drugs.all(cause)))

    # --- observations
    def _observation(self, obs: Observation) -> None:
        hits = self.labs.all(obs.code)
        components = obs.component
        if not hits and not components:
            return  # most of a chart: one cached lookup
        if not self._usable(obs):
            return
        if hits and (hits[0].valueset in GRADE_SOURCES or len(hits) > 1 and any(
                m.valueset in GRADE_SOURCES for m in hits)) and not self._valid(obs):
            return
        dt, _ = observation_date(obs)
        pending = obs.status in PENDING_STATUS
        for match in hits:  # a code may be in several concepts (a creatinine is also serum chemistry)
            self._result(match, obs, obs, dt, pending)
        for comp in components or ():
            for cmatch in self.labs.all(comp.code):
                if all(cmatch.valueset != m.valueset for m in hits):
                    self._result(cmatch, obs, comp, dt, pending)

    def _result(self, match: Match, obs: Observation, source: Any, dt: datetime | None, pending: bool) -> None:
        vid = match.valueset
        if vid in ("mg-grade", "mgfa-class", "condition-dysphagia"):
            self._grade_result(vid, obs, source, dt, pending)
            return
        concept, unit = self._concepts[vid]
        result = LabResult(concept, source.code, dt, pending, match.by, obs.id, obs, source, unit)
        results = self.state.lab_results.get(concept)
        if results is None:
            self.state.lab_results[concept] = [result]
        else:
            results.append(result)
        if concept in ("fvc", "nif") and not pending:  # grade evidence: read now
            self._respiratory_result(result)

    def _grade_result(self, vid: str, obs: Observation, source: Any, dt: datetime | None, pending: bool) -> None:
        unit = self._concepts[vid][1]
        rid = obs.id
        name = cc_label(source.code)
        if vid == "condition-dysphagia":
            if pending or dt is None or self._other_cause(source.code, None):
                return
            reading = read_value(source, unit)
            found = reading.qualitative if reading is not None else None
            found = found or {"positive": "positive", "negative": "negative", "normal": "negative"}.get(
                interpretation(source) or "")
            if found in ("positive", "negative"):  # only a reading that says dysphagia is there grades
                self._evidence(3 if found == "positive" else 0, "dysphagia", f"dysphagia ({name})", dt, rid,
                               self._in_grade_window(dt, undated_counts=False), "dysphagia-observation")
            else:
                shown = f"'{reading.text}'" if reading is not None and reading.text else "no value"
                self.state.grade_notes.append(f"{name} ({fmt_date(dt)}) has {shown}, which does not say dysphagia "
                                              "is present: not grade evidence.")
            return
        reading = read_value(source, unit)
        if reading is None:  # no value (a dataAbsentReason): it shows neither MG nor a grade
            return
        self.state.mg_present = True
        current = self._in_grade_window(dt, undated_counts=False)
        self.state.mg_active = self.state.mg_active or current
        self.state.mg_evidence.append(f"Observation: {name}")
        if not pending and dt is not None:
            self._grade_observation(vid, reading, name, dt, rid, current)

    def _respiratory_result(self, result: LabResult) -> None:
        note = result.read()
        per_kg = None
        if result.value is None and result.concept == "fvc":  # an FVC recorded per kg already
            reading = read_value(result.source, "mL/kg")
            per_kg = reading.value if reading is not None else None
        if note and per_kg is None:
            self.state.data_quality.append(note)
        if result.value is None and per_kg is None:
            return
        if result.concept == "fvc":
            self._fvc.append((result.value, per_kg, result.date, result.resource_id, result.name))
        elif result.date is not None:
            limit = float(self.k.threshold("nif_cmh2o_compromise"))
            weak = abs(result.value) < limit
            self._evidence(3 if weak else 0, "respiratory",
                           f"NIF {result.reading.text} is {'weaker' if weak else 'not weaker'} than -{limit:g} cmH2O",
                           result.date, result.resource_id, self._in_grade_window(result.date, undated_counts=False),
                           "nif")

    def _grade_observation(self, vid: str, reading: Reading | None, name: str, dt: datetime | None,
                           rid: str | None, current: bool) -> None:
        if reading is None:
            return
        text = (reading.text or "").lower()
        if vid == "mg-grade":
            grade = int(reading.value) if reading.value is not None and float(reading.value).is_integer() else None
            if grade is None:
                m = GRADE_RE.search(text)
                grade = int(m.group(1)) if m else None
            if grade is None or not 1 <= grade <= 4:
                self.state.data_quality.append(f"{name}: grade '{reading.text}' cannot be interpreted")
                return
            if grade == 1:
                self._evidence(2, "explicit", "explicit MG grade 1 (read as 2)", dt, rid, current, "explicit")
            else:
                self._evidence(grade, "explicit", f"explicit MG grade {grade}", dt, rid, current, "explicit")
            return
        m = MGFA_RE.search(text.replace("mgfa", " "))
        if m is None:
            self.state.data_quality.append(f"{name}: MGFA class '{reading.text}' cannot be interpreted")
            return
        self._mgfa.append((dt, m.group(1).upper() + (m.group(2) or ""), rid, current))

    def _pending_order(self, sr: ServiceRequest) -> None:
        if sr.status not in ("active", "on-hold"):  # a draft in the chart is not ordered yet
            return
        matches = [m for m in self.labs.all(sr.code) if m.valueset.startswith("lab-")]
        if matches and self._usable(sr):
            dt = parse_datetime(sr.authoredOn) or parse_datetime(sr.occurrenceDateTime)
            for match in matches:
                lab = self._concepts[match.valueset][0]
                self.state.lab_results.setdefault(lab, []).append(
                    LabResult(concept=lab, code=sr.code, date=dt, pending=True,
                              matched_by=match.by, resource_id=sr.id))

    # --- procedures
    def _procedure(self, proc: Procedure) -> None:
        if proc.status == "not-done":  # a stopped procedure was done in part: history
            return
        match = self.procedures.first(proc.code)
        if match is None:
            ici = self.drugs.first(proc.code)  # an ICI infusion recorded as a Procedure
            if ici is not None and ici.valueset == "drug-ici" and proc.status in DONE_PROCEDURE \
                    and self._usable(proc) and self._valid(proc):
                start, end = medication_period(proc)
                if start:
                    self._ici_doses.append((start, end))
                    self._ici_given.append(start)
            return
        if not self._usable(proc) or not self._valid(proc):
            return
        start, end = medication_period(proc)
        if match.valueset == "procedure-plasma-exchange" and start:
            self.state.plasma_exchange_dates.extend(sorted({start, end}))
            self._plex.append((start, end, proc.id))
        elif match.valueset == "procedure-mechanical-ventilation" and proc.status in DONE_PROCEDURE:
            dt = performed_date(proc)
            if dt is None and proc.status != "in-progress":
                return
            name = f"mechanical ventilation ({cc_label(proc.code)})"
            if self._for_mg(proc) or "condition-mg-crisis" in self.state.conditions:
                self._evidence(4, "ventilation", name, dt, proc.id,
                               self._in_grade_window(dt, undated_counts=proc.status == "in-progress"))
            else:
                self.state.grade_notes.append(f"{name} ({fmt_date(dt)}) names no MG reason and no myasthenic crisis "
                                              "is active: not grade evidence.")

    def _for_mg(self, proc: Procedure) -> bool:
        """Whether a procedure's reason (reasonCode, or a reasonReference's Condition or display) is MG
        or a myasthenic crisis. Conditions are read before procedures."""
        reasons: list[CodeableConcept | None] = as_list(proc.reasonCode)
        for ref in as_list(proc.reasonReference):
            target = self.res.resolve(reference_tail(ref) or "")
            reasons.append(target.code if target is not None else CodeableConcept(text=ref.display))
        return any({m.valueset for m in self.conditions.all(r)} & {"condition-mg", "condition-mg-crisis"}
                   for r in reasons if r is not None)

    # --- medications
    def _medication_concept(self, med: Any) -> tuple[CodeableConcept | None, str | None, Medication | None]:
        """(the medication's CodeableConcept: its own, or its referenced Medication's code; a
        problem; the referenced Medication: contained, a draftOrders entry, or pooled)."""
        cc = med.medicationCodeableConcept
        if cc is not None:
            return cc, None, None
        reference: Reference | None = med.medicationReference
        ref = reference_tail(reference)
        if ref is None:
            return None, "has no medication", None
        target, failure = None, None
        if ref.startswith("#"):
            target = self.res.contained(med, ref[1:])
        else:
            target = self._draft_medications.get(ref)
            try:
                target = target if target is not None else self.res.resolve(ref)
            except READ_ERRORS as exc:  # a pool that cannot be searched must not drop the order
                failure = f"medicationReference {ref} could not be looked up ({type(exc).__name__})"
        if target is None:
            display = reference.display if reference is not None else None
            if isinstance(display, str):
                return (CodeableConcept(text=display), f"{failure or f'medicationReference {ref} not found'}; "
                        "read its display", None)
            return None, failure or f"medicationReference {ref} could not be resolved", None
        return target.code, None, target if isinstance(target, Medication) else None

    def _route_text(self, med: Any) -> str:
        parts = []
        for dosage in dosages(med):
            parts.append(cc_text(dosage.route))
            if isinstance(dosage.text, str):
                parts.append(dosage.text)
        return " ".join(parts).lower()

    def _med_classes(self, med: Any) -> tuple[Any, tuple[Match, ...], Sequence[str], Any] | None:
        """(concept, matches, drug classes, referenced Medication) of a medication that belongs to a
        drug class."""
        cc, problem, medication = self._medication_concept(med)
        if problem:
            self.state.data_quality.append(f"{med.resourceType}/{med.id or '?'}: {problem}")
        if cc is None:
            self.unread_medications += 1
            return None
        matches = self.drugs.all(cc)
        if not matches:
            return None
        classes = self._drug_classes(matches, med, cc)
        return (cc, matches, classes, medication) if classes else None

    def _med_entry(self, med: Any, cc: Any, matches: tuple[Match, ...], classes: Sequence[str],
                   medication: Any = None, is_draft: bool = False) -> MedEntry:
        """A classified medication; a draft's ``resource`` is the order as it was sent (its dose is
        read from it, and a suggestion updates it), a chart medication's the struct read."""
        entry = MedEntry(med.resourceType, med.id, cc, classes, self._verdict(matches)[2], med.status, is_draft,
                         self.res.sent(med) if is_draft else med, medication=medication, chronic_of=self.chronic,
                         record=med)
        if self.depleted is not None and "drug-ivig" in classes and self.depleted.first(cc) is not None:
            entry.iga_content, upper = self._iga_content(cc)
            cutoff = self.k.thresholds.get("ivig_iga_depleted_max_ug_per_ml", {}).get("value")
            entry.iga_depleted = cutoff is None or (upper is not None and upper <= float(cutoff))
        return entry

    def _iga_content(self, cc: Any) -> tuple[str | None, float | None]:
        """(the label's IgA statement, its upper bound in µg/mL) of an IgA-depleted IVIG product: the
        value set's concept for a matching code, else the one product whose name the text gives."""
        products = iga_products(IGA_DEPLETED)
        for system, code, _ in codings(cc):
            if (system, code) in products:
                return products[(system, code)][1:]
        text = cc_text(cc).lower().replace("/", "")
        named = {v for v in products.values() if v[0] and v[0].lower().replace("/", "") in text}
        named = named or set(products.values())
        return next(iter(named))[1:] if len(named) == 1 else (None, None)

    def _verdict(self, matches: tuple[Match, ...]) -> tuple[tuple[Match, ...], tuple[str, ...] | None, str]:
        """(matches, their drug classes or None when the route decides them, matched by "code" or
        "text"), worked out once per classification verdict for this chart: a chart repeats the
        same drugs. Keyed by id(): hashing Matches is slow; the entry holds the verdict, so that
        its id cannot be reused meanwhile."""
        memo = self._verdicts.get(id(matches))
        if memo is None or memo[0] is not matches:
            route = any(m.valueset in ROUTE_DEPENDENT or (m.valueset == "drug-magnesium-iv" and m.by == "text")
                        for m in matches)
            memo = self._verdicts[id(matches)] = (
                matches, None if route else tuple(dict.fromkeys(m.valueset for m in matches)),
                "text" if all(m.by == "text" for m in matches) else "code")
        return memo

    def _drug_classes(self, matches: tuple[Match, ...], med: Any, cc: Any) -> Sequence[str]:
        """The drug classes of a matched medication. Only immune globulin (IV or SC) and
        magnesium named without a code depend on the route, so only they read it."""
        classes = self._verdict(matches)[1]
        if classes is not None:
            return classes
        route = self._route_text(med)
        name_text = cc_text(cc).lower()
        classes = []
        for m in matches:
            vid = m.valueset
            if vid == "drug-immune-globulin-generic":
                vid = "drug-scig" if SC_ROUTE.search(route) or SC_ROUTE.search(name_text) else "drug-ivig"
            if vid == "drug-magnesium-iv" and m.by == "text" and not (IV_ROUTE.search(route) or IV_ROUTE.search(name_text)):
                continue
            if vid not in classes:
                classes.append(vid)
        if "drug-ivig" in classes and "drug-scig" in classes:
            classes.remove("drug-ivig" if SC_ROUTE.search(route) else "drug-scig")
        return classes

    def _medication(self, med: Any) -> None:
        """A chart medication: a MedicationRequest, MedicationAdministration or MedicationStatement."""
        own = med.medicationCodeableConcept  # most of a chart stops at one cached classification of it
        if own is not None and not self.drugs.all(own):
            return
        status, rtype = med.status, med.resourceType
        # a stopped order, infusion or statement is history (it was taken): only what never was is dropped
        if rtype == "MedicationRequest" and status not in ("active", "on-hold", "draft", "completed", "stopped"):
            return
        if rtype == "MedicationAdministration" and status not in ("in-progress", "completed", "on-hold", "stopped"):
            return
        if rtype == "MedicationStatement" and status not in ("active", "completed", "intended", "on-hold", "stopped"):
            return
        found = self._med_classes(med)
        if found is None or not self._usable(med):
            return
        classes = found[2]
        ivig = "drug-ivig" in classes
        if status != "draft":
            self._taken_meds.append((med, status, classes))  # dated only if a chronic question needs it
            if "drug-ici" in classes:
                self._ici_dose(med, status)
        # drafts come from context.draftOrders; completed and stopped requests are history (IVIG course dates only)
        history = rtype == "MedicationRequest" and status in ("draft", "completed", "stopped")
        if history and not ivig:
            return
        entry = self._med_entry(med, *found)
        if ivig and self.state.checked(med):
            start, end = entry.period
            # given: an administration or statement, or a completed order (an active one may not be given yet)
            if start and (rtype != "MedicationRequest" or status == "completed"):
                if status == "in-progress":  # still running: its course reaches now
                    end = max(end, self.state.now)
                self.state.ivig_dates.extend(sorted({start, end}))
                self._ivig.append((start, end, entry.resource_id))
        if history:
            return
        if rtype != "MedicationRequest":
            recent = timedelta(days=int(self.k.threshold("recent_immunotherapy_days")))
            # rituximab doses count at any date (maintenance monitoring looks back past 6 months)
            too_old = (entry.date is None or entry.date < self.state.now - recent) and not entry.has("drug-rituximab")
            finished = status in ("completed", "stopped") and not (entry.has("drug-ivig")
                                                                   or entry.has("drug-rituximab"))
            if too_old or finished:
                return
        self.state.meds.append(entry)

    def _ici_dose(self, med: Any, status: str | None) -> None:
        """A non-draft checkpoint inhibitor: current exposure (an active or on-hold order) and its dose date."""
        if status in ("active", "on-hold") and med.resourceType == "MedicationRequest":
            self._ici_active = True
        start, end = medication_period(med)
        if start is not None and self.state.checked(med):
            self._ici_doses.append((start, end))
            if status == "completed" or med.resourceType != "MedicationRequest":  # given (rules.md)
                self._ici_given.append(start)

    def _allergy(self, allergy: AllergyIntolerance) -> None:
        """An AllergyIntolerance to a drug of a class the rules read (e.g. immune globulin)."""
        code = allergy.code
        matches = self.drugs.all(code)
        if not matches or not self._usable(allergy):
            return
        if any(c in INACTIVE_ALLERGY for _, c, _ in codings(allergy.clinicalStatus)) or not self._valid(allergy):
            return
        classes = list(self._drug_classes(matches, allergy, code))
        if "drug-immune-globulin-generic" in {m.valueset for m in matches} and "drug-ivig" not in classes:
            classes.append("drug-ivig")  # an allergy to immune globulin applies whatever the route
        severe = any(r.severity == "severe" or any(ANAPHYLAXIS.search(cc_text(m).lower())
                                                   for m in as_list(r.manifestation))
                     for r in as_list(allergy.reaction))
        dt = (parse_datetime(allergy.onsetDateTime) or parse_datetime(allergy.lastOccurrence)
              or parse_datetime(allergy.recordedDate))
        criticality = allergy.criticality
        self.state.allergies.append(AllergyEntry(cc_label(code), tuple(classes),
                                                 criticality if isinstance(criticality, str) else None,
                                                 severe, dt, allergy.id))

    def read_drafts(self, drafts: Iterable[Any]) -> None:
        """The draft orders (plain JSON, as draftOrders holds them). A Medication among them (Epic
        sends the drafted order's Medication as its own draftOrders entry) is what a draft's
        medicationReference names first."""
        typed = self.res.drafts(drafts)
        for d in typed:
            if isinstance(d, Medication) and isinstance(d.id, str):
                self._draft_medications.setdefault(f"Medication/{d.id}", d)
        self._read_all(self._draft, typed, "draft ")

    def _draft(self, resource: Any) -> None:
        rtype, status = resource.resourceType, resource.status
        if isinstance(status, str) and status in IGNORED_STATUS:  # withdrawn: nothing to advise on
            self.state.data_quality.append(f"draft {rtype}/{resource.id or '?'} is {status}: not evaluated")
            return
        if rtype == "MedicationRequest":
            found = self._med_classes(resource)
            if found is not None:
                self.state.drafts.append(self._med_entry(resource, *found, is_draft=True))
        elif rtype in ("ServiceRequest", "Procedure"):
            match = self.procedures.first(resource.code)
            if match and match.valueset == "procedure-plasma-exchange":
                self.state.draft_procedures.append(MedEntry(
                    resource_type=rtype, resource_id=resource.id, concept=resource.code,
                    classes=[match.valueset], matched_by=match.by, status=resource.status,
                    is_draft=True, resource=self.res.sent(resource), record=resource))

    # --- body size and respiratory compromise
    def _latest(self, concept: str) -> LabResult | None:
        """The newest body-size result in the window; a value that is not a plausible measurement
        (not positive, too small for a normal float, or outside ``plausible_body_size`` in
        thresholds.json when it gives a range) stops the search with a problem note: a dose must
        not be computed from it."""
        since = self.state.now - timedelta(days=int(self.k.threshold("body_size_window_days")))
        plausible = self.k.thresholds.get("plausible_body_size", {}).get("value", {}).get(concept)
        for r in self.state.results(concept):
            if not r.pending and r.date and since <= r.date <= self.state.now + timedelta(days=1):
                value = r.value
                if value is not None and value >= sys.float_info.min and (
                        plausible is None or plausible[0] <= value <= plausible[1]):
                    return r
                problem = (r.reading and r.reading.problem) if value is None else (
                    "not a positive value" if value <= 0 else "outside any plausible measurement")
                if problem:
                    self.state.body.problems.append(f"{BODY_TITLES[concept]} {r.reading.text} "
                                                    f"({fmt_date(r.date)}): {problem}")
                    return None
        return None

    def _body_size(self) -> None:
        body = self.state.body
        weight = self._latest("vital-weight")
        if weight:
            body.weight_kg, body.weight_date, body.weight_text = weight.value, weight.date, weight.reading.text
        height = self._latest("vital-height")
        if height:
            body.height_cm, body.height_date = height.value, height.date
        bsa = self._latest("vital-bsa")
        if bsa:
            body.bsa_m2, body.bsa_source = bsa.value, f"recorded {fmt_date(bsa.date)}"
        elif body.weight_kg and body.height_cm:
            body.bsa_m2 = math.sqrt(body.height_cm * body.weight_kg / 3600.0)
            body.bsa_source = (f"Mosteller from weight {body.weight_kg:.1f} kg and height {body.height_cm:.0f} cm")

    def _weight_at(self, dt: datetime) -> float | None:
        """The body weight measured nearest to ``dt`` within the body-size window of it (an FVC of
        months ago is read per kg with the weight of then, not of today)."""
        window = self.days("body_size_window_days")
        near = [(abs(r.date - dt), r.value) for r in self.state.results("vital-weight")
                if not r.pending and r.date is not None and abs(r.date - dt) <= window
                and r.value is not None and r.value >= sys.float_info.min]
        return min(near, key=lambda n: n[0])[1] if near else None

    def _respiratory(self) -> None:
        limit = float(self.k.threshold("fvc_ml_per_kg_compromise"))
        for ml, per_kg, dt, rid, _name in self._fvc:
            if dt is None:
                continue
            current = self._in_grade_window(dt, undated_counts=False)
            # an old FVC with the weight of then, else today's (weight changes less than FVC does)
            weight = self.state.body.weight_kg if current else (self._weight_at(dt) or self.state.body.weight_kg)
            if per_kg is None and weight is None:
                if current:
                    self.state.grade_notes.append(f"FVC {ml:.0f} mL ({fmt_date(dt)}) could not be read per kg: "
                                                  "no weight.")
                continue
            shown = f"FVC {per_kg:.1f} mL/kg" if per_kg is not None else f"FVC {ml:.0f} mL = {ml / weight:.1f} mL/kg"
            per_kg = per_kg if per_kg is not None else ml / weight
            low = per_kg < limit
            self._evidence(3 if low else 0, "respiratory", f"{shown} ({'<' if low else '>='} {limit:g} mL/kg)", dt, rid,
                           current, "fvc")

    def _sort(self) -> None:
        oldest = datetime.min.replace(tzinfo=self.state.now.tzinfo)
        for results in self.state.lab_results.values():
            results.sort(key=lambda r: r.date or oldest, reverse=True)

    def _courses(self, doses: list[tuple[datetime, datetime, str | None]]) -> list[Course]:
        """Doses whose gap to the previous course's end is within the course gap form one course."""
        gap, courses = self.days("course_gap_days"), []
        for start, end, rid in sorted(doses, key=lambda d: d[0]):
            if courses and start <= later(courses[-1].end, gap):
                courses[-1].end = max(courses[-1].end, end)
            else:
                courses.append(Course(start, end, rid))
        return courses

    def _taken_spans(self, cls: str) -> tuple[list[tuple[datetime, datetime]], bool]:
        """(the class's spans taken, merged when successive: each starts within the chronic window of
        the previous one's end, in calendar days as orders are often dated without a time; whether an
        undated order of the class is still taken). Worked out once per class, when first asked."""
        found = self._merged.get(cls)
        if found is None:
            limit, now, spans, undated = self.days("chronic_drug_days"), self.state.now, [], False
            for med, status, classes in self._taken_meds:
                if cls not in classes:
                    continue
                start, end = medication_period(med)
                if start is None:
                    undated = undated or status in CHRONIC_STATUS
                else:
                    # its supply, from the order as sent (dispenseRequest is not decoded: rarely asked)
                    end = max(end, supply_end(self.res.sent(med), start) or end)
                    spans.append((start, max(end, now) if status in CHRONIC_STATUS else end))
            merged: list[tuple[datetime, datetime]] = []
            for start, end in sorted(spans):
                if merged and start.date() <= later(merged[-1][1], limit).date():
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((start, end))
            found = self._merged[cls] = (merged, undated)
        return found

    def chronic(self, entry: MedEntry) -> bool:
        """Chronic: the same drug class taken for more than the chronic window across successive
        orders. A draft counts from now, so a renewal of a chronic drug is chronic. An active order
        without any date is taken as chronic: it is already taken, and stopping it at one click is
        the unsafe mistake."""
        now, limit = self.state.now, self.days("chronic_drug_days")
        start = now if entry.is_draft else entry.period[0]
        if start is None:
            return entry.status in CHRONIC_STATUS
        for cls in entry.classes:
            spans, undated = self._taken_spans(cls)
            if entry.is_draft and undated:
                return True
            for first, last in spans:  # a non-draft entry's own span is among them
                if entry.is_draft and now.date() <= later(last, limit).date() and now - first > limit:
                    return True
                if not entry.is_draft and first <= start <= last and last - first > limit:
                    return True
        return False

    def _ici(self) -> None:
        """ICI exposure, its dose dates and ICI-related MG (rules.md v2), and the history of grade
        3-4 and grade 2 ICI-related MG, which never lapses."""
        st, window = self.state, self.days("ici_window_days")
        doses = sorted(self._ici_doses)
        st.ici_dose_dates = sorted({start for start, _ in doses})
        # the first dose given, when one is recorded (an active order may precede it by weeks)
        st.ici_first_date = min(self._ici_given) if self._ici_given else (st.ici_dose_dates[0] if doses else None)
        st.ici_exposure = self._ici_active or any(st.now - window <= end for _, end in doses)
        st.mg_onset = min(self._mg_dates) if self._mg_dates else None

        def after_dose(dt: datetime | None) -> bool:
            return dt is not None and any(start <= dt <= later(end, window) for start, end in doses)

        def dose_before(dt: datetime | None) -> bool:
            return dt is None or any(start <= dt for start, _ in doses)

        def attributed(e: GradeEvidence) -> bool:
            """Evidence (any date) of an MG that was ICI-related when it was recorded: an irAE grade,
            or a dose within the window before the evidence or before the MG onset."""
            return bool(doses) and e.grade >= 2 and dose_before(e.date) and (
                e.source == "explicit" or after_dose(e.date) or after_dose(st.mg_onset))

        # MGFA classes first as they grade outside ICI-related MG (V, IVb; IVa with bulbar/respiratory
        # evidence): they may show a flare; then, once attribution is known, with the ASCO mapping
        self._mgfa_evidence(lambda dt, current: False)
        history = [e for e, _, _ in self._all_evidence if attributed(e)] if st.mg_present else []
        st.ici_related = st.mg_present and st.ici_exposure and (after_dose(st.mg_onset) or bool(history))
        undated = st.mg_present and st.mg_onset is None and st.ici_first_date is not None
        st.preexisting_mg = st.mg_present and (st.ici_first_date is None or undated or
                                               (st.mg_onset is not None and st.mg_onset < st.ici_first_date))
        if undated:  # the safer reading: an ICI is then never given unwarned
            st.data_quality.append("MG date unknown (no onset or recorded date): counted as pre-existing MG "
                                   "for the checkpoint-inhibitor rules")
        if st.mg_present and (after_dose(st.mg_onset) or history):
            # in pre-existing MG a class is the MG's own course until the first attributed flare
            flare = min((e.date for e in history if e.date is not None), default=None) if st.preexisting_mg else None

            def asco(dt: datetime, current: bool) -> bool:
                if st.preexisting_mg and (flare is None or dt < flare):
                    return False
                return st.ici_related if current else (dose_before(dt) and (after_dose(dt) or after_dose(st.mg_onset)))
            self._mgfa_evidence(asco)
            history = [e for e, _, _ in self._all_evidence if attributed(e)]
        oldest = datetime.min.replace(tzinfo=st.now.tzinfo)
        newest_first = sorted(history, key=lambda e: (e.grade, e.date or oldest), reverse=True)
        st.history_grade34 = next((e for e in newest_first if e.grade >= 3), None)
        st.history_grade2 = next((e for e in newest_first if e.grade == 2), None)

    def _mgfa_evidence(self, asco: Callable[[datetime, bool], bool]) -> None:
        """(Re)builds MGFA classes as grade evidence. Where ``asco(date, current)``, the MG was
        ICI-related then, and the ASCO mapping applies (I-II 2, III-IV 3, V 4); otherwise V 4, IVb 3,
        and IVa 3 only with bulbar or respiratory evidence in the grade window. A class that grades
        nothing is still reported (``mgfa_class``)."""
        self._all_evidence = [item for item in self._all_evidence if item[2] != "mgfa"]
        bulbar = {e.source for e in self._current_evidence() if e.grade >= 3} & BULBAR_OR_RESPIRATORY  # latest per kind
        for dt, shown, rid, current in self._mgfa:
            key = shown.lower()
            if asco(dt, current):
                grade = MGFA_ICI[re.sub("[ab]$", "", key)]
            else:
                grade = MGFA_ANY.get(key) or (3 if key == "iva" and current and bulbar else 0)
            self._evidence(grade, "mgfa", f"MGFA class {shown}", dt, rid, current, "mgfa")

    def _current_evidence(self) -> list[GradeEvidence]:
        """rules.md v2 acute severity: of each kind, its latest reading in the grade window (a
        normal FVC yesterday overrides a low one three weeks ago); the evidence among them."""
        latest: dict[str, GradeEvidence] = {}
        out = []
        for e, current, kind in self._all_evidence:
            if not current:
                continue
            if kind is None:
                out.append(e)
            elif kind not in latest or (e.date is not None and (latest[kind].date is None or e.date > latest[kind].date)):
                latest[kind] = e
        return [e for e in out + list(latest.values()) if e.grade >= 2]

    def _finish(self) -> None:
        st = self.state
        st.ivig_dates.sort()
        st.plasma_exchange_dates.sort()
        st.ivig_courses, st.plasma_exchange_courses = self._courses(self._ivig), self._courses(self._plex)
        current = [m for m in self._mgfa if m[3]]
        if current:
            st.mgfa_class = max(current, key=lambda m: m[0])[1]
        self._ici()
        st.grade_evidence = self._current_evidence() if st.mg_present else []
        if st.grade_evidence:
            st.grade_evidence.sort(key=lambda e: (-e.grade, -(e.date.timestamp() if e.date else 0)))
            st.grade = st.grade_evidence[0].grade
            if any(e.description.endswith("(read as 2)") for e in st.grade_evidence):
                st.grade_notes.append("An explicit MG grade 1 was read as grade 2: the ASCO/CTCAE scale used by "
                                      "the seed starts MG at grade 2.")
        if self.other_patient:
            st.data_quality.append(f"{self.other_patient} resource(s) about another patient were ignored")


@lru_cache(maxsize=None)
def iga_products(vid: str) -> dict[tuple[str, str], tuple[str | None, str | None, float | None]]:
    """(system, code) -> (product, label IgA statement, upper bound in µg/mL) from the value set's
    per-concept extensions (urn:mg-cds:product, iga-content, iga-max-ug-per-ml)."""
    res = json.loads((HERE / "valuesets" / f"{vid}.json").read_text(encoding="utf-8"))
    out = {}
    for inc in res.get("compose", {}).get("include", []):
        for concept in inc.get("concept", []):
            ext = {e["url"].removeprefix("urn:mg-cds:"): e.get("valueString") for e in concept.get("extension", [])}
            upper = ext.get("iga-max-ug-per-ml")
            out[(inc["system"], concept["code"])] = (ext.get("product"), ext.get("iga-content"),
                                                    float(upper) if upper else None)
    return out


class _NoResources:
    def of_type(self, *types: str) -> Iterable[dict]:
        return ()

    def all_typed(self, rtype: str) -> bool:
        return True

    def resolve(self, reference: str) -> dict | None:
        return None

    def original(self, resource: Any) -> dict | None:
        return None


def relevant_drafts(drafts: Iterable[dict], patient_id: str, now: datetime,
                    knowledge: Knowledge | None = None) -> bool:
    """Whether any draft is something an MG rule reads (a classified drug or a plasma exchange), or
    might be (its drug can only be found in the chart). Most orders are not: they are answered
    without reading the chart at all."""
    builder = _Builder(_NoResources(), patient_id, now, knowledge or load())
    builder.read_drafts(drafts)
    # a drafted order whose drug cannot be told without the chart (a medicationReference with no
    # display, its Medication elsewhere) may be one: it is never dropped unread
    return bool(builder.state.drafts or builder.state.draft_procedures or builder.unread_medications)


def build_state(resources: Resources, patient_id: str, now: datetime, drafts: Iterable[dict] = (),
                unavailable: Iterable[str] = (), notes: Iterable[str] = (),
                knowledge: Knowledge | None = None, incomplete: Iterable[str] = frozenset()) -> PatientState:
    """``incomplete``: resource types whose data may be incomplete (a truncated search, or only
    under keys the service did not ask for); a lab concept with no result is then ``unknown``."""
    builder = _Builder(resources, patient_id, now, knowledge or load())
    builder.state.incomplete = frozenset(incomplete)
    builder.state.data_quality.extend(notes)
    builder.state.labs_unavailable = "observations" in set(unavailable)
    return builder.build(list(drafts))
