"""PatientState: what the MG rules read about one patient (rules.md v2, "Patient
state"): MG present and active, ICI exposure and attribution, grade with
provenance and its never-lapsing history, lab status per concept, classified
medications (route, chronic/new, IgA content), treatment courses, allergies,
body size, data-quality notes. Built by ``hooks.builder``; a result's resource
is validated the first time a rule reads it."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence

import msgspec

from .fhir_model import projection
from .fhir_read import cc_label, fmt_date, medication_period, parse_datetime, performed_date, route_kind, strength_mg
from .knowledge import Knowledge
from .validation import validation_error
from .values import Reading, interpretation, read_value, reference_range

if TYPE_CHECKING:
    from .typed import TypedResources

CONCEPT_TITLES = {"iga": "IgA", "igg": "IgG", "igm": "IgM", "hbsag": "HBsAg", "anti-hbc": "anti-HBc",
                  "hcv-ab": "HCV antibody", "tb": "TB test (IGRA or TST)", "achr-ab": "AChR antibody",
                  "striational-ab": "anti-striational antibody", "ck": "CK", "aldolase": "aldolase", "esr": "ESR",
                  "crp": "CRP", "fvc": "FVC / vital capacity", "nif": "NIF", "troponin": "troponin",
                  "cbc": "blood count", "chemistry": "serum chemistry", "creatinine": "serum creatinine",
                  "egfr": "eGFR", "anti-iga": "anti-IgA antibodies"}
# one-time tests and positives, which the rules read at any date (rules.md v2): so explained
ANY_DATE = {"iga", "anti-iga", "achr-ab", "striational-ab", "hbsag", "anti-hbc", "hcv-ab"}
BODY_TITLES = {"vital-weight": "Body weight", "vital-height": "Height", "vital-bsa": "Body surface area"}


class Resources(Protocol):
    """The pooled resources (cds_service.pool): plain JSON, or structs where decoded typed."""
    def of_type(self, *types: str) -> Iterable[Any]: ...
    def all_typed(self, rtype: str) -> bool: ...
    def resolve(self, reference: str) -> dict | None: ...
    def original(self, resource: Any) -> dict | None: ...


@dataclass
class LabResult:
    """One result (or pending order) for a lab concept. Its value is read from the FHIR
    source only when a rule first reaches it (``read``): most results are never read."""
    concept: str
    code: Any  # the CodeableConcept that was classified (Observation, component or ServiceRequest)
    date: datetime | None
    pending: bool
    matched_by: str = "code"
    resource_id: str | None = None
    resource: Any = field(default=None, repr=False)  # the Observation (hooks.fhir_model)
    source: Any = field(default=None, repr=False)    # the Observation or its component
    unit: str | None = None                                  # the concept's unit, from its value set
    reading: Reading | None = None
    interpretation: str | None = None
    ref_low: float | None = None
    ref_high: float | None = None
    is_read: bool = False

    def read(self) -> str | None:
        """Fill value, reference range and interpretation from the source (once). Interpretation
        comes from the value (qualitative), then the reference range, then Observation.interpretation.
        Returns a data-quality note when the value cannot be interpreted."""
        if self.is_read:
            return None
        self.is_read = True
        source, obs = self.source, self.resource
        if source is None or obs is None:
            return None
        reading = self.reading = read_value(source, self.unit)
        if source is obs or source.referenceRange is not None:
            self.ref_low, self.ref_high = reference_range(source, self.unit)
        low, high = self.ref_low, self.ref_high
        if reading is not None and reading.qualitative:
            self.interpretation = reading.qualitative
        elif reading is not None and reading.value is not None and (low is not None or high is not None):
            self.interpretation = "high" if high is not None and reading.value > high else (
                "low" if low is not None and reading.value < low else "normal")
        else:
            self.interpretation = interpretation(source) or (interpretation(obs) if source is not obs else None)
        if reading is not None and reading.problem:
            return f"{self.name} ({fmt_date(self.date)}): {reading.problem}"
        return None

    @cached_property
    def name(self) -> str:
        return cc_label(self.code)

    @property
    def value(self) -> float | None:
        return self.reading.value if self.reading else None

    @property
    def is_result(self) -> bool:
        """Whether the (read) Observation holds a result: a value or an interpretation. One with
        neither, e.g. only a dataAbsentReason, is "not a result" (rules.md v2, Labs)."""
        reading = self.reading
        has_value = reading is not None and (reading.value is not None or bool(reading.qualitative)
                                             or bool(reading.text))
        return not self.pending and (has_value or self.interpretation is not None)

    @property
    def absent_reason(self) -> str | None:
        """The dataAbsentReason's text or code, when the source gives one."""
        reason = self.source.dataAbsentReason if self.source is not None else None
        if reason is None:
            return None
        label = cc_label(reason)
        return None if label == "(no name)" else label

    def shown(self) -> str:
        text = self.reading.text if self.reading and self.reading.text else "result"
        extra = f", {self.interpretation}" if self.interpretation else ""
        by_name = ", matched by name" if self.matched_by == "text" else ""
        return f"{text} ({fmt_date(self.date)}{extra}{by_name})"


POSITIVE_INTERPRETATIONS = {"positive", "high"}  # reactive/detected read as positive (hooks.values)


@dataclass
class LabStatus:
    """One lab concept's status. ``window_days`` 0 means "any date" (``PatientState.lab_ever``)."""
    concept: str
    status: str  # missing | pending | result | stale | not-a-result | unknown | unavailable
    window_days: int
    latest: LabResult | None = None
    pending: LabResult | None = None

    @property
    def title(self) -> str:
        return CONCEPT_TITLES.get(self.concept, self.concept)

    @property
    def usable(self) -> bool:
        return self.status == "result"

    def describe(self) -> str:
        window = _window_text(self.window_days)
        since = "at any date" if not self.window_days else f"in the last {window}"
        if self.status == "result" and self.latest:
            return f"{self.title}: {self.latest.shown()}"
        if self.status == "pending" and self.pending:
            return f"{self.title}: pending (ordered or preliminary {fmt_date(self.pending.date)})"
        if self.status == "stale" and self.latest:
            if self.latest.date is None:
                return f"{self.title}: the last result is undated, so it cannot show it is within the last {window}"
            return f"{self.title}: last result {fmt_date(self.latest.date)} is older than {window}"
        if self.status == "not-a-result" and self.latest:
            reason = self.latest.absent_reason
            why = f" (data absent: {reason})" if reason else " (no value)"
            return f"{self.title}: {fmt_date(self.latest.date)} entry is not a result{why}; not counted as done"
        if self.status == "unavailable":
            return f"{self.title}: lab data could not be retrieved"
        if self.status == "unknown" and self.latest:
            return (f"{self.title}: last result found {fmt_date(self.latest.date)} is not {since}, "
                    "but the lab data may be incomplete")
        if self.status == "unknown":
            return f"{self.title}: no result found {since}, but the lab data may be incomplete"
        return f"{self.title}: no result {since}"


def _evidence_text(e: GradeEvidence | None) -> str | None:
    return f"grade {e.grade} from {e.source}: {e.description} ({fmt_date(e.date)})" if e else None


def _course_text(c: Course) -> str:
    return fmt_date(c.start) if c.start == c.end else f"{fmt_date(c.start)} to {fmt_date(c.end)}"


def _window_text(days: int) -> str:
    if days % 365 == 0:
        n = days // 365
        return "12 months" if n == 1 else f"{n * 12} months"
    if days in (182, 183):
        return "6 months"
    return f"{days} days"


@dataclass
class GradeEvidence:
    grade: int
    source: str  # explicit | mgfa | crisis | ventilation | respiratory | dysphagia
    description: str
    date: datetime | None
    resource_id: str | None = None


@dataclass
class AllergyEntry:
    """An AllergyIntolerance to a drug of a class the rules read (e.g. ``drug-ivig``)."""
    name: str
    classes: Sequence[str]
    criticality: str | None   # low | high | unable-to-assess
    severe: bool              # a reaction recorded as severe, or anaphylaxis
    date: datetime | None     # onset, else last occurrence, else recorded
    resource_id: str | None = None


@dataclass
class Course:
    """A treatment course: doses on consecutive days (gaps up to the course gap) merged."""
    start: datetime
    end: datetime
    resource_id: str | None = None


@dataclass
class MedEntry:
    """A classified medication (or drafted plasma exchange). Its name and date are read
    from the resource when a rule first asks: most entries never show either."""
    resource_type: str
    resource_id: str | None
    concept: Any  # the CodeableConcept it was classified by
    classes: Sequence[str]
    matched_by: str
    status: str | None
    is_draft: bool
    # what the rules read: a draft as it was sent (plain JSON: its dose, the order a suggestion updates),
    # a chart medication as its struct (PatientState.original has it as sent)
    resource: Any
    iga_depleted: bool = False      # an IVIG product of the drug-ivig-iga-depleted value set
    iga_content: str | None = None  # that value set's text for the product
    medication: Any = field(default=None, repr=False)  # the referenced Medication, when resolved
    chronic_of: Callable[[MedEntry], bool] | None = field(default=None, repr=False)  # the builder's verdict
    record: Any = field(default=None, repr=False)  # the struct read (hooks.fhir_model); ``resource`` when unset

    def __post_init__(self) -> None:
        if self.record is None:
            self.record = self.resource

    @cached_property
    def name(self) -> str:
        return cc_label(self.concept)

    @cached_property
    def date(self) -> datetime | None:
        r = self.record
        return (parse_datetime(getattr(r, "authoredOn", None)) or performed_date(r)
                or parse_datetime(getattr(r, "dateAsserted", None)))

    @cached_property
    def period(self) -> tuple[datetime | None, datetime | None]:
        return medication_period(self.record)

    @property
    def start(self) -> datetime | None:
        """When it started: Period.start, else the single date it has."""
        return self.period[0]

    @property
    def end(self) -> datetime | None:
        """When it ended (the last dose): Period.end, else the single date it has."""
        return self.period[1]

    @cached_property
    def route(self) -> str:
        """systemic | ophthalmic | otic | topical, from the dosage route and the product name."""
        return route_kind(self.record, self.concept)

    @cached_property
    def chronic(self) -> bool:
        """The same drug class taken for more than 30 days across successive orders (a renewal draft
        of a chronic drug is chronic); worked out when a rule first asks."""
        return self.chronic_of(self) if self.chronic_of is not None else False

    @property
    def new(self) -> bool:
        return not self.chronic

    @cached_property
    def strength_mg(self) -> float | None:
        """mg in one tablet (or capsule) of the product: a dose in tablets x this is the dose."""
        return strength_mg(self.record, self.medication)

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}" if self.resource_id else self.resource_type

    def has(self, cls: str) -> bool:
        return cls in self.classes


@dataclass
class BodySize:
    weight_kg: float | None = None
    weight_date: datetime | None = None
    weight_text: str | None = None
    height_cm: float | None = None
    height_date: datetime | None = None
    bsa_m2: float | None = None
    bsa_source: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass
class PatientState:
    patient_id: str
    now: datetime
    knowledge: Knowledge
    mg_present: bool = False        # any non-refuted MG Condition (resolved too) or MG Observation
    mg_active: bool = False         # an active MG Condition (or an MG Observation)
    mg_onset: datetime | None = None
    mg_evidence: list[str] = field(default_factory=list)
    mgfa_class: str | None = None   # latest MGFA class within the grade window, e.g. "IIIa"
    grade: int | None = None
    grade_evidence: list[GradeEvidence] = field(default_factory=list)
    grade_notes: list[str] = field(default_factory=list)
    severity: list[str] = field(default_factory=list)  # Condition.severity of the MG Condition: reported only
    ici_exposure: bool = False
    ici_dose_dates: list[datetime] = field(default_factory=list)
    ici_first_date: datetime | None = None
    ici_related: bool = False
    preexisting_mg: bool = False
    history_grade34: GradeEvidence | None = None
    history_grade2: GradeEvidence | None = None
    allergies: list[AllergyEntry] = field(default_factory=list)
    ivig_courses: list[Course] = field(default_factory=list)
    plasma_exchange_courses: list[Course] = field(default_factory=list)
    lab_results: dict[str, list[LabResult]] = field(default_factory=dict)
    labs_unavailable: bool = False
    incomplete: frozenset[str] = frozenset()  # resource types whose data may be incomplete
    conditions: dict[str, list[str]] = field(default_factory=dict)  # value set -> descriptions
    meds: list[MedEntry] = field(default_factory=list)
    drafts: list[MedEntry] = field(default_factory=list)
    draft_procedures: list[MedEntry] = field(default_factory=list)
    ivig_dates: list[datetime] = field(default_factory=list)
    plasma_exchange_dates: list[datetime] = field(default_factory=list)
    body: BodySize = field(default_factory=BodySize)
    data_quality: list[str] = field(default_factory=list)
    resources: TypedResources | None = field(default=None, repr=False)
    _validated: dict[int, tuple[Any, str | None]] = field(default_factory=dict, repr=False)

    # --- labs
    def valid(self, result: LabResult) -> bool:
        """Validate and read a result the first time a rule reaches it (lazy parsing)."""
        if result.resource is not None and not self.checked(result.resource):
            return False
        note = result.read()
        if note:
            self.data_quality.append(note)
        return True

    def checked(self, resource: Any) -> bool:
        """True when the chart resource is valid FHIR R4 in the elements rules read (its
        ``projection``); validated once, on first use. The verdict holds the resource, so that
        its id() cannot be reused meanwhile."""
        seen = self._validated.get(id(resource))
        if seen is None:
            try:
                error = validation_error(self.resources.validated(resource) if self.resources is not None
                                         else projection(resource))
            except msgspec.ValidationError as exc:
                error = str(exc)[:160]
            seen = self._validated[id(resource)] = (resource, error)
            if error:
                rid = f"{resource.resourceType}/{resource.id or '?'}"
                if self.resources is not None:
                    self.resources.withdraw_note(resource)  # one note on it: this one
                self.data_quality.append(f"{rid} skipped: not valid FHIR R4 ({error})")
        return seen[1] is None

    def results(self, concept: str) -> Iterator[LabResult]:
        """The concept's valid results, newest first, validated as they are reached."""
        return (r for r in self.lab_results.get(concept, []) if self.valid(r))

    def lab(self, concept: str, window_days: int) -> LabStatus:
        """The concept's status within ``window_days`` (0: any date, undated results included).
        A result in the window wins; then a pending order; then an entry that is not a result;
        then an older (or undated) result; else missing, or unknown when Observations may be
        incomplete."""
        if self.labs_unavailable and not self.lab_results.get(concept):
            return LabStatus(concept, "unavailable", window_days)
        since, upper = self.now - timedelta(days=window_days), self.now + timedelta(days=1)
        pending = newest = absent = None
        for r in self.lab_results.get(concept, []):  # newest first; undated last
            if r.pending:  # an order older than the window is not one still awaited
                if pending is None and (not window_days or r.date is None or r.date >= since) and self.valid(r):
                    pending = r
                continue
            in_window = not window_days or (r.date is not None and since <= r.date <= upper)
            if (in_window or newest is None) and self.valid(r):
                if not r.is_result:
                    absent = absent or r
                elif in_window:
                    return LabStatus(concept, "result", window_days, latest=r)
                elif newest is None:
                    newest = r
        if pending:
            return LabStatus(concept, "pending", window_days, pending=pending)
        if absent and (newest is None or absent.date is None or newest.date is None or absent.date >= newest.date):
            return LabStatus(concept, "not-a-result", window_days, latest=absent)
        if "Observation" in self.incomplete:  # a newer result may be in the data not seen
            return LabStatus(concept, "unknown", window_days, latest=newest)
        if newest:  # too old, or undated so it cannot show recency
            return LabStatus(concept, "stale", window_days, latest=newest)
        return LabStatus(concept, "missing", window_days)

    def lab_ever(self, concept: str) -> LabStatus:
        """The concept's status at any date (one-time tests, positives): ``window_days`` 0."""
        return self.lab(concept, 0)

    def positive(self, concept: str) -> LabResult | None:
        """The newest result at any date read as positive (reactive, detected) or high."""
        return next((r for r in self.results(concept)
                     if not r.pending and r.interpretation in POSITIVE_INTERPRETATIONS), None)

    # --- medications
    def original(self, entry: MedEntry) -> dict | None:
        """A mutable copy of the entry's resource as the EHR sent it, for a suggestion that
        updates it; None when it cannot be had (the card then goes without that suggestion)."""
        return self.resources.original(entry.record) if self.resources is not None else None

    def active_meds(self, cls: str | None = None) -> list[MedEntry]:
        """Active (non-draft) medications of a class, or all; invalid ones are skipped."""
        return [m for m in self.meds if (cls is None or m.has(cls)) and not m.is_draft and self.checked(m.resource)]

    def window(self, name: str) -> int:
        return int(self.knowledge.threshold("lab_windows_days")[name])

    @property
    def steroid_active(self) -> bool:
        return bool(self.active_meds("drug-corticosteroid"))

    def grade_text(self) -> str:
        if self.grade is None and self.grade_notes:  # evidence there was, but it could not be read as a grade
            notes = " ".join(self.grade_notes)
            return f"MG grade unknown (no readable grade evidence in the last 30 days). Note: {notes}"
        if self.grade is None:
            return "MG grade unknown (no grade evidence in the last 30 days)"
        why = "; ".join(f"{e.description} ({fmt_date(e.date)})" for e in self.grade_evidence if e.grade == self.grade)
        notes = f" Note: {' '.join(self.grade_notes)}" if self.grade_notes else ""
        return f"MG grade {self.grade}: {why}.{notes}"

    def explain(self) -> dict[str, Any]:
        """A clinician-readable summary (``mg-cds explain``)."""
        labs = {concept: (self.lab_ever(concept) if concept in ANY_DATE else self.lab(concept, 365)).describe()
                for concept in CONCEPT_TITLES}  # key kept for the preview page: the rest are the last 12 months
        body = self.body
        return {
            "patient": self.patient_id,
            "now": self.now.isoformat(),
            "mg_present": self.mg_present,
            "mg_active": self.mg_active,
            "mg_onset": fmt_date(self.mg_onset) if self.mg_onset else None,
            "mg_evidence": self.mg_evidence,
            "mgfa_class": self.mgfa_class,
            "mg_severity": self.severity,
            "ici": {"exposure": self.ici_exposure, "related": self.ici_related, "preexisting_mg": self.preexisting_mg,
                    "doses": [fmt_date(d) for d in self.ici_dose_dates],
                    "history_grade_3_4": _evidence_text(self.history_grade34),
                    "history_grade_2": _evidence_text(self.history_grade2)},
            "grade": self.grade,
            "grade_explanation": self.grade_text(),
            "grade_evidence": [f"grade {e.grade} from {e.source}: {e.description} ({fmt_date(e.date)})"
                               for e in self.grade_evidence],
            "labs_last_12_months": labs,
            "medications": [f"{'DRAFT ' if m.is_draft else ''}{m.name} [{', '.join(m.classes)}]"
                            f"{' (matched by name)' if m.matched_by == 'text' else ''} status={m.status}"
                            f" {'chronic' if m.chronic else 'new'}{'' if m.route == 'systemic' else ' ' + m.route}"
                            for m in self.active_meds() + self.drafts],
            "ivig_courses": [_course_text(c) for c in self.ivig_courses],
            "plasma_exchanges": [_course_text(c) for c in self.plasma_exchange_courses],
            "allergies": [f"{a.name} [{', '.join(a.classes)}] criticality={a.criticality}"
                          f"{' severe reaction' if a.severe else ''}" for a in self.allergies],
            "body_size": {"weight_kg": body.weight_kg and round(body.weight_kg, 1),
                          "weight_date": fmt_date(body.weight_date) if body.weight_date else None,
                          "height_cm": body.height_cm and round(body.height_cm, 1),
                          "bsa_m2": body.bsa_m2 and round(body.bsa_m2, 2), "bsa_source": body.bsa_source,
                          "problems": body.problems},
            "data_quality": self.data_quality + self.draft_notes(),
        }

    def draft_notes(self) -> list[str]:
        """Drafts are evaluated as sent, valid FHIR R4 or not (silence would be unsafe); whether
        they are valid is worked out only for people reading the explanation."""
        notes = []
        for d in self.drafts + self.draft_procedures:
            error = validation_error(d.resource)
            if error:
                notes.append(f"draft {d.reference} is not valid FHIR R4 ({error}); evaluated as sent")
        return notes
