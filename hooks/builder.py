"""Builds a PatientState from one patient's FHIR R4 resources. Pure: no HTTP,
no clock of its own.

Resources are classified on their code fields first (one dict hit per coding
set, cached); only those a rule will read are validated with
``fhir.resources.R4B``, in the elements rules read (``fhir_model.projection``),
and a resource that cannot be read is skipped with a data-quality note.
Observations and Conditions are read as the structs of ``hooks.fhir_model``
(decoded so, or converted here); MedicationRequests as they come (a struct when
decoded typed, else plain JSON); the rest as plain JSON."""
from __future__ import annotations

import math
import re
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

import msgspec

from .classify import Match
from .fhir_model import MODELS, Condition, FHIRObject, Observation, get
from .fhir_read import (as_list, cc_label, cc_text, codings, condition_date, fmt_date, medication_period,
                        observation_date, parse_datetime, performed_date, period_bounds, reference_tail,
                        subject_patient)
from .knowledge import Knowledge, load
from .state import (BODY_TITLES, AllergyEntry, Course, GradeEvidence, LabResult, MedEntry, PatientState, Reading,
                    Resources)
from .values import read_value

LAB_SETS = ("lab-iga", "lab-igg", "lab-igm", "lab-hbsag", "lab-anti-hbc", "lab-hcv-ab", "lab-tb", "lab-achr-ab",
            "lab-striational-ab", "lab-ck", "lab-aldolase", "lab-esr", "lab-crp", "lab-fvc", "lab-nif",
            "lab-troponin", "lab-cbc", "lab-chemistry", "vital-weight", "vital-height", "vital-bsa",
            "mg-grade", "mgfa-class", "condition-dysphagia")
CONDITION_SETS = ("condition-mg", "condition-mg-crisis", "condition-iga-deficiency", "condition-hepatitis-b",
                  "condition-dysphagia")
DRUG_SETS = ("drug-ivig", "drug-scig", "drug-immune-globulin-generic", "drug-rituximab", "drug-ici",
             "drug-pyridostigmine", "drug-corticosteroid", "drug-beta-blocker", "drug-magnesium-iv",
             "drug-fluoroquinolone", "drug-aminoglycoside", "drug-macrolide")
PROCEDURE_SETS = ("procedure-plasma-exchange", "procedure-mechanical-ventilation")
IGA_DEPLETED = "drug-ivig-iga-depleted"  # IVIG products with their label IgA content (read when present)
# Windows rules.md v2 adds, until thresholds.json holds them (hooks/knowledge is B's): each name maps
# to the existing threshold whose value and source it shares today. Once thresholds.json has the
# name, the name is read and this table is not.
INTERIM_THRESHOLDS = {
    "chronic_drug_days": ("grade_window_days",),            # rules.md v2: chronic = same drug > 30 days
    "ici_window_days": ("lab_windows_days", "iga"),         # rules.md v2: ICI given within 12 months;
                                                            # MG onset/flare <= 12 months after a dose
    "course_gap_days": ("lab_windows_days", "troponin"),    # rules.md v2: doses within 7 days are one course
}
CHRONIC_STATUS = {"active", "on-hold", "in-progress", "intended"}  # still taken: its span reaches now
# Observations that are grade evidence are validated as they are read; other
# results only when a rule reads them (PatientState.valid).
GRADE_SOURCES = {"mg-grade", "mgfa-class", "condition-dysphagia", "lab-fvc", "lab-nif"}
ROUTE_DEPENDENT = {"drug-immune-globulin-generic", "drug-scig"}
READ_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError)  # msgspec's too
# Read as structs, converted from plain JSON where need be. MedicationRequests are read as they
# come (their reader takes both): a card that stops one sends back the EHR's own resource.
STRUCT_READ = ("Observation", "Condition")
IGNORED_STATUS = {"entered-in-error", "cancelled", "revoked"}
PENDING_STATUS = {"registered", "preliminary"}
ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
INACTIVE_ALLERGY = {"inactive", "resolved"}
ANAPHYLAXIS = re.compile(r"anaphyla")
MGFA = {"i": 2, "ii": 2, "iia": 2, "iib": 2, "iii": 3, "iiia": 3, "iiib": 3, "iv": 3, "iva": 3, "ivb": 3, "v": 4}
MGFA_RE = re.compile(r"\b(?:class\s*)?(v|iv|iii|ii|i)([ab])?\b")
GRADE_RE = re.compile(r"\b(?:grade\s*)?([1-4])\b")
IV_ROUTE = re.compile(r"intravenous|\biv\b|i\.v\.|infusion|injection")
SC_ROUTE = re.compile(r"subcutaneous|\bsc\b|\bsubq\b|s\.c\.|subcut")


class _Builder:
    def __init__(self, resources: Resources, patient_id: str, now: datetime, knowledge: Knowledge):
        self.res = resources
        self.k = knowledge
        self.state = PatientState(patient_id=patient_id, now=now, knowledge=knowledge, resources=resources)
        self.labs = knowledge.classifier(LAB_SETS)
        self.conditions = knowledge.classifier(CONDITION_SETS)
        self.drugs = knowledge.classifier(DRUG_SETS)
        self.procedures = knowledge.classifier(PROCEDURE_SETS)
        self.severity = knowledge.classifier(("severity",))
        self.own_reference = f"Patient/{patient_id}"
        self.other_patient = 0
        self._seen: set[tuple[str, str]] = set()
        self._verdicts: dict[int, tuple[tuple[Match, ...], tuple[str, ...] | None, str]] = {}
        self.grade_window = timedelta(days=int(knowledge.threshold("grade_window_days")))
        self._fvc: list[tuple[float, datetime | None, str | None, str]] = []
        # grade evidence at any date, each with whether it is current (in the grade window)
        self._all_evidence: list[tuple[GradeEvidence, bool]] = []
        self._mgfa: list[tuple[datetime, str]] = []
        self._mg_dates: list[datetime] = []
        self._ici_active = False
        self._ici_doses: list[tuple[datetime, datetime]] = []  # (start, end) of each ICI dose or order
        self._spans: dict[str, list[tuple[datetime, datetime]]] = {}  # drug class -> (start, end) taken
        self._undated_active: set[str] = set()
        self._ivig: list[tuple[datetime, datetime, str | None]] = []
        self._plex: list[tuple[datetime, datetime, str | None]] = []
        self.depleted = knowledge.classifier((IGA_DEPLETED,)) if IGA_DEPLETED in knowledge.valuesets else None
        # value set id -> (lab concept, the unit its values are read in)
        self._concepts = {vid: (vid[4:] if vid.startswith("lab-") else vid, knowledge.vs(vid).options.get("unit"))
                          for vid in LAB_SETS}

    # --- plumbing
    def _read_all(self, read, resources: Iterable[Any], model: type | None = None) -> None:
        """The hot loop: every resource of the chart passes here once. Each reader classifies
        first (one cached lookup, where most of a chart stops) and checks status and patient
        only for what it keeps. A plain-JSON resource of a modelled type is converted first.
        One malformed resource is skipped with a note; it never fails the request."""
        for resource in resources:
            try:
                read(msgspec.convert(resource, model) if model is not None and isinstance(resource, dict)
                     else resource)
            except READ_ERRORS as exc:
                rid = f"{get(resource, 'resourceType')}/{get(resource, 'id') or '?'}"
                self.state.data_quality.append(f"{rid} could not be read ({type(exc).__name__}); skipped")

    def _usable(self, resource: Any) -> bool:
        """Whether a classified resource is kept: not entered in error or refuted, about this
        patient, and not a duplicate (the same type and id under two prefetch keys)."""
        if isinstance(resource, dict):
            rtype, rid, status = resource.get("resourceType"), resource.get("id"), resource.get("status")
            verification = resource.get("verificationStatus")
            subject = resource.get("subject") or resource.get("patient")
            reference = get(subject, "reference") if subject is not None else None
        else:  # a struct: attributes, no per-element function call (this runs for every kept resource)
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
                  current: bool = True) -> None:
        """Grade evidence at any date (for the history of ICI-related MG); ``current`` when it is
        in the grade window and so grades the MG now."""
        self._all_evidence.append((GradeEvidence(grade, source, description, dt, rid), current))

    def days(self, name: str) -> timedelta:
        """A window in days from thresholds.json, or its interim twin (INTERIM_THRESHOLDS)."""
        if name in self.k.thresholds:
            return timedelta(days=float(self.k.threshold(name)))
        key, *sub = INTERIM_THRESHOLDS[name]
        value = self.k.threshold(key)
        return timedelta(days=float(value[sub[0]] if sub else value))

    # --- build
    def build(self, drafts: list[dict]) -> PatientState:
        readers = (("Condition", self._condition), ("Observation", self._observation),
                   ("ServiceRequest", self._pending_order), ("Procedure", self._procedure),
                   ("MedicationRequest", self._medication), ("MedicationAdministration", self._medication),
                   ("MedicationStatement", self._medication), ("AllergyIntolerance", self._allergy))
        for rtype, read in readers:
            self._read_all(read, self.res.of_type(rtype), MODELS.get(rtype) if rtype in STRUCT_READ else None)
        self._read_all(self._draft, (d for d in drafts if isinstance(d, dict)))
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
        if not (active or sets & {"condition-mg", "condition-mg-crisis", "condition-dysphagia"}) \
                or not self._valid(cond):
            return
        name, dt, rid = cc_label(cond.code), condition_date(cond), cond.id
        by = " (matched by name)" if any(m.by == "text" for m in matches) else ""
        if active:
            for m in matches:
                self.state.conditions.setdefault(m.valueset, []).append(f"{name}{by}")
        if "condition-mg" in sets or "condition-mg-crisis" in sets:
            self.state.mg_present = True
            self.state.mg_active = self.state.mg_active or active
            self.state.mg_evidence.append(f"Condition: {name}{by}{'' if active else ' (not active)'}")
            onset = (parse_datetime(get(cond, "onsetDateTime")) or period_bounds(get(cond, "onsetPeriod"))[0]
                     or parse_datetime(get(cond, "recordedDate")))
            if onset:
                self._mg_dates.append(onset)
        current = active and self._in_grade_window(dt, undated_counts=True)
        if "condition-mg-crisis" in sets:
            self._evidence(4, "crisis", f"myasthenic crisis ({name})", dt, rid, current)
        if "condition-dysphagia" in sets:
            self._evidence(3, "dysphagia", f"dysphagia ({name})", dt, rid, current)
        if "condition-mg" in sets and cond.severity:
            self.state.severity.append(f"{name}: severity {cc_label(cond.severity)} ({fmt_date(dt)})")
        if "condition-mg" in sets and cond.severity and current:
            severity = cond.severity
            if self.severity.first(severity):
                # the text, or for a bare code the display the severity ValueSet gives it
                vs = self.k.vs("severity")
                label = " ".join([cc_text(severity)] + [vs.codes.get((s, c), "") for s, c, _ in codings(severity)])
                for word, grade in (("severe", 3), ("moderate", 2)):
                    if word in label.lower():
                        self._evidence(grade, "severity", f"MG Condition severity '{word}'", dt, rid)
                        break

    # --- observations
    def _observation(self, obs: Observation) -> None:
        hits = self.labs.all(obs.code)
        match = hits[0] if hits else None
        components = obs.component
        if match is None and not components:
            return  # most of a chart: one cached lookup
        if not self._usable(obs):
            return
        if match is not None and match.valueset in GRADE_SOURCES and not self._valid(obs):
            return
        dt, _ = observation_date(obs)
        pending = obs.status in PENDING_STATUS
        if match is not None:
            self._result(match, obs, obs, dt, pending)
        for comp in components or ():
            cmatch = self.labs.first(comp.code)
            if cmatch is not None and (match is None or cmatch.valueset != match.valueset):
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
            reading = read_value(source, unit)
            absent = reading is not None and reading.qualitative == "negative"
            if not pending and not absent and dt is not None:
                self._evidence(3, "dysphagia", f"dysphagia ({name})", dt, rid,
                               self._in_grade_window(dt, undated_counts=False))
            return
        self.state.mg_present = True
        current = self._in_grade_window(dt, undated_counts=False)
        self.state.mg_active = self.state.mg_active or current
        self.state.mg_evidence.append(f"Observation: {name}")
        if not pending and dt is not None:
            self._grade_observation(vid, read_value(source, unit), name, dt, rid, current)

    def _respiratory_result(self, result: LabResult) -> None:
        note = result.read()
        if note:
            self.state.data_quality.append(note)
        if result.value is None:
            return
        if result.concept == "fvc":
            self._fvc.append((result.value, result.date, result.resource_id, result.name))
        elif abs(result.value) < float(self.k.threshold("nif_cmh2o_compromise")) and result.date is not None:
            self._evidence(3, "respiratory", f"NIF {result.reading.text} is weaker than -30 cmH2O", result.date,
                           result.resource_id, self._in_grade_window(result.date, undated_counts=False))

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
                if current:
                    self.state.grade_notes.append("An explicit MG grade 1 was read as grade 2: the ASCO/CTCAE "
                                                  "scale used by the seed starts MG at grade 2.")
                self._evidence(2, "explicit", "explicit MG grade 1 (read as 2)", dt, rid, current)
            else:
                self._evidence(grade, "explicit", f"explicit MG grade {grade}", dt, rid, current)
            return
        m = MGFA_RE.search(text.replace("mgfa", " "))
        key = (m.group(1) + (m.group(2) or "")) if m else None
        grade = MGFA.get(key or "") or MGFA.get(m.group(1) if m else "")
        if grade is None:
            self.state.data_quality.append(f"{name}: MGFA class '{reading.text}' cannot be interpreted")
            return
        shown = m.group(1).upper() + (m.group(2) or "")
        if current:
            self._mgfa.append((dt, shown))
        self._evidence(grade, "mgfa", f"MGFA class {shown}", dt, rid, current)

    def _pending_order(self, sr: dict) -> None:
        if sr.get("status") not in ("draft", "active", "on-hold"):
            return
        match = self.labs.first(sr.get("code"))
        if match and match.valueset.startswith("lab-") and self._usable(sr):
            concept = self._concepts[match.valueset][0]
            dt = parse_datetime(sr.get("authoredOn")) or parse_datetime(sr.get("occurrenceDateTime"))
            self.state.lab_results.setdefault(concept, []).append(
                LabResult(concept=concept, code=sr.get("code"), date=dt, pending=True,
                          matched_by=match.by, resource_id=sr.get("id")))

    # --- procedures
    def _procedure(self, proc: dict) -> None:
        if proc.get("status") in ("not-done", "stopped"):
            return
        match = self.procedures.first(proc.get("code"))
        if match is None:
            ici = self.drugs.first(proc.get("code"))  # an ICI infusion recorded as a Procedure
            if ici is not None and ici.valueset == "drug-ici" and proc.get("status") in ("in-progress", "completed") \
                    and self._usable(proc) and self._valid(proc):
                start, end = medication_period(proc)
                if start:
                    self._ici_doses.append((start, end))
            return
        if not self._usable(proc) or not self._valid(proc):
            return
        start, end = medication_period(proc)
        if match.valueset == "procedure-plasma-exchange" and start:
            self.state.plasma_exchange_dates.extend(sorted({start, end}))
            self._plex.append((start, end, proc.get("id")))
        elif match.valueset == "procedure-mechanical-ventilation" and proc.get("status") in ("in-progress", "completed"):
            dt = performed_date(proc)
            if dt is not None or proc.get("status") == "in-progress":
                self._evidence(4, "ventilation", f"mechanical ventilation ({cc_label(proc.get('code'))})", dt,
                               proc.get("id"),
                               self._in_grade_window(dt, undated_counts=proc.get("status") == "in-progress"))

    # --- medications
    def _medication_concept(self, med: Any) -> tuple[Any, str | None]:
        """The medication's CodeableConcept: its own, or its referenced Medication's code.
        ``med`` is plain JSON or a MedicationRequest struct; so is a referenced Medication."""
        cc = get(med, "medicationCodeableConcept")
        if cc is not None:
            return cc, None
        reference = get(med, "medicationReference")
        ref = reference_tail(reference)
        if ref is None:
            return None, "has no medication"
        target = None
        if ref.startswith("#"):
            target = next((c for c in as_list(get(med, "contained")) if isinstance(c, dict)
                           and c.get("id") == ref[1:]), None)
        else:
            target = self.res.resolve(ref)
        if not isinstance(target, FHIRObject):
            display = get(reference, "display") if isinstance(reference, FHIRObject) else None
            if isinstance(display, str):
                return {"text": display}, f"medicationReference {ref} not found; read its display"
            return None, f"medicationReference {ref} could not be resolved"
        return get(target, "code"), None

    def _route_text(self, med: Any) -> str:
        parts = []
        for dosage in as_list(get(med, "dosageInstruction")) + as_list(get(med, "dosage")):
            if isinstance(dosage, FHIRObject):
                parts.append(cc_text(get(dosage, "route")))
                text = get(dosage, "text")
                if isinstance(text, str):
                    parts.append(text)
        return " ".join(parts).lower()

    def _med_classes(self, med: Any) -> tuple[Any, tuple[Match, ...], Sequence[str]] | None:
        """(concept, matches, drug classes) of a medication that belongs to a drug class."""
        cc, problem = self._medication_concept(med)
        if problem:
            self.state.data_quality.append(f"{get(med, 'resourceType')}/{get(med, 'id') or '?'}: {problem}")
        if cc is None:
            return None
        matches = self.drugs.all(cc)
        if not matches:
            return None
        classes = self._drug_classes(matches, med, cc)
        return (cc, matches, classes) if classes else None

    def _med_entry(self, med: Any, cc: Any, matches: tuple[Match, ...], classes: Sequence[str],
                   is_draft: bool = False) -> MedEntry:
        entry = MedEntry(get(med, "resourceType") or "MedicationRequest", get(med, "id"), cc, classes,
                         self._verdict(matches)[2], get(med, "status"), is_draft, med)
        if self.depleted is not None and "drug-ivig" in classes:
            hit = self.depleted.first(cc)
            if hit is not None:
                entry.iga_depleted = True
                vs = self.k.vs(IGA_DEPLETED)
                entry.iga_content = next((vs.codes[(s, c)] for s, c, _ in codings(cc) if (s, c) in vs.codes),
                                         vs.options.get("iga-content"))
        return entry

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
        """A chart medication: a MedicationRequest decoded typed, or plain JSON."""
        if isinstance(med, dict):
            status, rtype = med.get("status"), med.get("resourceType")
        else:  # a struct: most of a chart stops at one cached classification of its own concept
            concept = med.medicationCodeableConcept
            if concept is not None and not self.drugs.all(concept):
                return
            status, rtype = med.status, med.resourceType
        if rtype == "MedicationRequest" and status not in ("active", "on-hold", "draft", "completed"):
            return
        if rtype == "MedicationAdministration" and status not in ("in-progress", "completed", "on-hold"):
            return
        if rtype == "MedicationStatement" and status not in ("active", "completed", "intended", "on-hold"):
            return
        found = self._med_classes(med)
        if found is None or not self._usable(med):
            return
        classes = found[2]
        ivig = "drug-ivig" in classes
        if status != "draft":
            self._taken(med, status, classes)
        # drafts come from context.draftOrders; completed requests are history (IVIG course dates only)
        history = rtype == "MedicationRequest" and status in ("draft", "completed")
        if history and not ivig:
            return
        entry = self._med_entry(med, *found)
        if ivig and self.state.checked(med):
            start, end = entry.period
            if start and (rtype != "MedicationRequest" or status in ("active", "completed")):
                self.state.ivig_dates.extend(sorted({start, end}))
                self._ivig.append((start, end, entry.resource_id))
        if history:
            return
        if rtype != "MedicationRequest":
            recent = timedelta(days=int(self.k.threshold("recent_immunotherapy_days")))
            too_old = entry.date is None or entry.date < self.state.now - recent
            finished = status == "completed" and not (entry.has("drug-ivig") or entry.has("drug-rituximab"))
            if too_old or finished:
                return
        self.state.meds.append(entry)

    def _taken(self, med: Any, status: str | None, classes: Sequence[str]) -> None:
        """What a non-draft medication says of the drug history: its span per drug class (for
        chronic vs new) and, for a checkpoint inhibitor, a dose date and current exposure."""
        if "drug-ici" in classes and status in ("active", "on-hold") and get(med, "resourceType") == "MedicationRequest":
            self._ici_active = True
        start, end = medication_period(med)
        if start is None:
            if status in CHRONIC_STATUS:
                self._undated_active.update(classes)
            return
        if "drug-ici" in classes and self.state.checked(med):
            self._ici_doses.append((start, end))
        until = max(end, self.state.now) if status in CHRONIC_STATUS else end
        for cls in classes:
            self._spans.setdefault(cls, []).append((start, until))

    def _allergy(self, allergy: dict) -> None:
        """An AllergyIntolerance to a drug of a class the rules read (e.g. immune globulin)."""
        code = allergy.get("code")
        matches = self.drugs.all(code)
        if not matches or not self._usable(allergy):
            return
        if any(c in INACTIVE_ALLERGY for _, c, _ in codings(allergy.get("clinicalStatus"))) or not self._valid(allergy):
            return
        classes = list(self._drug_classes(matches, allergy, code))
        if "drug-immune-globulin-generic" in {m.valueset for m in matches} and "drug-ivig" not in classes:
            classes.append("drug-ivig")  # an allergy to immune globulin applies whatever the route
        reactions = [r for r in as_list(allergy.get("reaction")) if isinstance(r, dict)]
        severe = any(r.get("severity") == "severe" or any(ANAPHYLAXIS.search(cc_text(m).lower())
                                                          for m in as_list(r.get("manifestation")))
                     for r in reactions)
        dt = (parse_datetime(allergy.get("onsetDateTime")) or parse_datetime(allergy.get("lastOccurrence"))
              or parse_datetime(allergy.get("recordedDate")))
        criticality = allergy.get("criticality")
        self.state.allergies.append(AllergyEntry(cc_label(code), tuple(classes),
                                                 criticality if isinstance(criticality, str) else None,
                                                 severe, dt, allergy.get("id")))

    def _draft(self, resource: dict) -> None:
        rtype = resource.get("resourceType")
        if rtype == "MedicationRequest":
            found = self._med_classes(resource)
            if found is not None:
                self.state.drafts.append(self._med_entry(resource, *found, is_draft=True))
        elif rtype in ("ServiceRequest", "Procedure"):
            match = self.procedures.first(resource.get("code"))
            if match and match.valueset == "procedure-plasma-exchange":
                self.state.draft_procedures.append(MedEntry(
                    resource_type=rtype, resource_id=resource.get("id"), concept=resource.get("code"),
                    classes=[match.valueset], matched_by=match.by, status=resource.get("status"),
                    is_draft=True, resource=resource))

    # --- body size and respiratory compromise
    def _latest(self, concept: str) -> LabResult | None:
        """The newest body-size result in the window; a value that is not a positive number
        stops the search with a problem note (a dose must not be computed from it)."""
        since = self.state.now - timedelta(days=int(self.k.threshold("body_size_window_days")))
        for r in self.state.results(concept):
            if not r.pending and r.date and since <= r.date <= self.state.now + timedelta(days=1):
                if r.value is not None and r.value > 0:
                    return r
                problem = "not a positive value" if r.value is not None else (r.reading and r.reading.problem)
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

    def _respiratory(self) -> None:
        weight = self.state.body.weight_kg
        limit = float(self.k.threshold("fvc_ml_per_kg_compromise"))
        for ml, dt, rid, name in self._fvc:
            if dt is None:
                continue
            current = self._in_grade_window(dt, undated_counts=False)
            if weight is None:
                if current:
                    self.state.grade_notes.append(f"FVC {ml:.0f} mL ({fmt_date(dt)}) could not be read per kg: "
                                                  "no weight.")
                continue
            per_kg = ml / weight
            if per_kg < limit:
                self._evidence(3, "respiratory", f"FVC {ml:.0f} mL = {per_kg:.1f} mL/kg (< {limit:g} mL/kg)", dt, rid,
                               current)

    def _sort(self) -> None:
        oldest = datetime.min.replace(tzinfo=self.state.now.tzinfo)
        for results in self.state.lab_results.values():
            results.sort(key=lambda r: r.date or oldest, reverse=True)

    def _courses(self, doses: list[tuple[datetime, datetime, str | None]]) -> list[Course]:
        """Doses whose gap to the previous course's end is within the course gap form one course."""
        gap, courses = self.days("course_gap_days"), []
        for start, end, rid in sorted(doses, key=lambda d: d[0]):
            if courses and start <= courses[-1].end + gap:
                courses[-1].end = max(courses[-1].end, end)
            else:
                courses.append(Course(start, end, rid))
        return courses

    def _chronic(self, entry: MedEntry) -> bool:
        """Chronic: the same drug class taken for more than the chronic window across successive
        orders (each starting within that window of the previous one's end). A draft counts from
        now, so a renewal of a chronic drug is chronic. An active order without any date is taken
        as chronic: it is already taken, and stopping it at one click is the unsafe mistake."""
        now, limit = self.state.now, self.days("chronic_drug_days")
        if entry.is_draft:
            own = (now, now)
        else:
            start, end = entry.period
            if start is None:
                return entry.status in CHRONIC_STATUS
            own = (start, max(end, now) if entry.status in CHRONIC_STATUS else end)
        for cls in entry.classes:
            if entry.is_draft and cls in self._undated_active:
                return True
            spans = sorted(self._spans.get(cls, []) + [own])
            first, last = spans[0]
            for start, end in spans[1:]:
                if start.date() > (last + limit).date():  # calendar days: orders are often dated without a time
                    if first <= own[0] <= last and last - first > limit:
                        return True
                    first, last = start, end
                else:
                    last = max(last, end)
            if first <= own[0] <= last and last - first > limit:
                return True
        return False

    def _ici(self) -> None:
        """ICI exposure, its dose dates and ICI-related MG (rules.md v2), and the history of grade
        3-4 and grade 2 ICI-related MG, which never lapses."""
        st, window = self.state, self.days("ici_window_days")
        doses = sorted(self._ici_doses)
        st.ici_dose_dates = sorted({start for start, _ in doses})
        st.ici_first_date = st.ici_dose_dates[0] if doses else None
        st.ici_exposure = self._ici_active or any(st.now - window <= end for _, end in doses)
        st.mg_onset = min(self._mg_dates) if self._mg_dates else None

        def after_dose(dt: datetime | None) -> bool:
            return dt is not None and any(start <= dt <= end + window for start, end in doses)

        def attributed(e: GradeEvidence) -> bool:
            if e.source == "severity" or not doses:
                return False
            dose_before = e.date is None or any(start <= e.date for start, _ in doses)
            return dose_before and (e.source == "explicit" or after_dose(e.date) or after_dose(st.mg_onset))

        history = [e for e, _ in self._all_evidence if attributed(e)] if st.mg_present else []
        st.ici_related = st.mg_present and st.ici_exposure and (after_dose(st.mg_onset) or bool(history))
        st.preexisting_mg = st.mg_present and (st.ici_first_date is None or
                                               (st.mg_onset is not None and st.mg_onset < st.ici_first_date))
        oldest = datetime.min.replace(tzinfo=st.now.tzinfo)
        newest_first = sorted(history, key=lambda e: (e.grade, e.date or oldest), reverse=True)
        st.history_grade34 = next((e for e in newest_first if e.grade >= 3), None)
        st.history_grade2 = next((e for e in newest_first if e.grade == 2), None)

    def _finish(self) -> None:
        st = self.state
        st.ivig_dates.sort()
        st.plasma_exchange_dates.sort()
        st.ivig_courses, st.plasma_exchange_courses = self._courses(self._ivig), self._courses(self._plex)
        st.grade_evidence = [e for e, current in self._all_evidence if current]
        if self._mgfa:
            st.mgfa_class = max(self._mgfa, key=lambda m: m[0])[1]
        for entry in st.meds + st.drafts:
            entry.chronic = self._chronic(entry)
        self._ici()
        if st.mg_present and st.grade_evidence:
            st.grade_evidence.sort(key=lambda e: (-e.grade, -(e.date.timestamp() if e.date else 0)))
            st.grade = st.grade_evidence[0].grade
        elif not st.mg_present:
            st.grade_evidence.clear()
        if self.other_patient:
            st.data_quality.append(f"{self.other_patient} resource(s) about another patient were ignored")


class _NoResources:
    def of_type(self, *types: str) -> Iterable[dict]:
        return ()

    def resolve(self, reference: str) -> dict | None:
        return None

    def original(self, resource: Any) -> dict | None:
        return None


def relevant_drafts(drafts: Iterable[dict], patient_id: str, now: datetime,
                    knowledge: Knowledge | None = None) -> bool:
    """Whether any draft is something an MG rule reads (a classified drug or a plasma exchange).
    Most orders are not: they are answered without reading the chart at all."""
    builder = _Builder(_NoResources(), patient_id, now, knowledge or load())
    builder._read_all(builder._draft, (d for d in drafts if isinstance(d, dict)))
    return bool(builder.state.drafts or builder.state.draft_procedures)


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
