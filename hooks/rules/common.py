"""What every rule shares: the context it reads, and the builders that turn
its findings into CDS Hooks cards with the texts from knowledge/rules.json."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from cds_service.cards import MAX_SUMMARY, Action, Card, Coding, Link, Source, Suggestion

from ..fhir_read import fmt_date
from ..knowledge import Knowledge
from ..state import LabStatus, MedEntry, PatientState
from .registry import REGISTRY

RULE_SYSTEM = "urn:mg-cds:rule"
LOINC = "http://loinc.org"
# Concepts whose codes on file are result components, not an orderable test:
# IGRA nil/mitogen tubes, single blood-count and eGFR results. Ordered by name.
TEXT_ONLY_ORDERS = {"tb", "cbc", "chemistry"}
# Lab statuses a rule may offer an order for: never "unknown" (the data may hold a result) nor
# "pending" (already ordered) nor "unavailable".
ORDERABLE = ("missing", "stale", "not-a-result")


@dataclass
class RuleContext:
    state: PatientState
    hook: str
    drafts: list[MedEntry] = field(default_factory=list)             # the drafts this call evaluates
    draft_procedures: list[MedEntry] = field(default_factory=list)
    rule_id: str | None = None  # the rule running now (run_rules sets it): t() reads only its thresholds
    memo: dict[str, Any] = field(default_factory=dict)  # findings several rules share, computed once

    @property
    def k(self) -> Knowledge:
        return self.state.knowledge

    @property
    def patient_ref(self) -> str:
        return f"Patient/{self.state.patient_id}"

    def t(self, name: str) -> Any:
        """A threshold the running rule declared in its ``@rule(thresholds=...)``; a lab window is
        ``lab_windows_days.<concept>``. Reading an undeclared one is an error (tests catch it)."""
        if self.rule_id is not None and name not in REGISTRY[self.rule_id].thresholds:
            raise KeyError(f"rule {self.rule_id} reads threshold {name} without declaring it")
        head, _, sub = name.partition(".")
        value = self.k.threshold(head)
        return value[sub] if sub else value

    def window(self, concept: str) -> int:
        return int(self.t(f"lab_windows_days.{concept}"))

    def f(self, name: str) -> float:
        return float(self.t(name))

    def drafts_of(self, cls: str) -> list[MedEntry]:
        return [d for d in self.drafts if d.has(cls)]

    @property
    def severe(self) -> bool:
        return self.state.grade is not None and self.state.grade >= 3


Rule = Callable[[RuleContext], "Card | None"]


def texts(k: Knowledge, rule_id: str) -> dict[str, Any]:
    return k.rules["rules"][rule_id]


def fill(ctx: RuleContext, template: str, **fields: Any) -> str:
    """A rules.json text with its fields: the patient's values, and every threshold by name
    (``{ivig_course_g_per_kg:g}``; a lab window as ``{window_<concept>}``), so that no number
    is written into a text."""
    return template.format_map(_Fields(ctx.k, fields))


class _Fields(dict):
    def __init__(self, k: Knowledge, fields: dict[str, Any]) -> None:
        super().__init__(fields)
        self.k = k

    def __missing__(self, key: str) -> Any:
        if key.startswith("window_"):
            return self.k.threshold("lab_windows_days")[key[len("window_"):]]
        return self.k.threshold(key)


def card(ctx: RuleContext, rule_id: str, summary: str, findings: list[str], *, why_key: str = "why",
         indicator: str | None = None, suggestions: list[Suggestion] | None = None,
         selection: str = "at-most-one", citations: list[str] = ()) -> Card:
    """One card: summary, the patient's own findings, the reason and the primary sources that
    support it (the rule's ``citations``, plus any the finding adds), linked where verified."""
    meta = texts(ctx.k, rule_id)
    keys = list(dict.fromkeys([*meta.get("citations", []), *meta.get(f"citations_{why_key}", []), *citations]))
    cites = "; ".join(ctx.k.citations[c]["text"] for c in keys)
    lines = [f"- {f}" for f in findings]
    detail = "\n".join(lines + ["", f"**Why:** {fill(ctx, meta[why_key])}", "", f"*Source:* {cites}"])
    override = ctx.k.rules["override_reasons"]
    reasons = [Coding(code=r["code"], system=r.get("system", override["system"]), display=r["display"])
               for r in override["reasons"] if r["code"] in override["by_rule"].get(rule_id, [])]
    links = [Link(label=ctx.k.citations[c]["label"], url=ctx.k.citations[c]["url"])
             for c in keys if ctx.k.citations[c].get("url")]
    return Card(summary=summary, indicator=indicator or meta["indicator"], detail=detail,
                source=Source(label=ctx.k.rules["source_label"],
                              topic=Coding(code=rule_id, system=RULE_SYSTEM, display=meta["display"])),
                suggestions=suggestions or [], selectionBehavior=selection if suggestions else None,
                overrideReasons=reasons, links=links)


def alternatives(ctx: RuleContext, result: Card, rule_id: str, preferred: Suggestion, *others: Suggestion) -> Card:
    """Mark a card's suggestions as alternatives (choose one): ``preferred`` is the default a client may
    pre-select, and the card says so with its source (the rule's ``alternatives`` text and its
    ``citations_alternatives``). Internal fields: the spec profile sends none of it, a client profile
    renders it (cds_service.profiles)."""
    meta = texts(ctx.k, rule_id)
    preferred.choice = "preferred"
    for s in others:
        s.choice = "alternative"
    sources = "; ".join(ctx.k.citations[c]["label"] for c in meta["citations_alternatives"])
    result.alternatives = f"{fill(ctx, meta['alternatives'])} (*Source:* {sources})"
    return result


def lab_gaps_card(ctx: RuleContext, rule_id: str, statuses: list[LabStatus], context: list[str],
                  short: str = "{gaps} tests", **fields: str) -> Card:
    """A card listing each test's status, with one order suggestion per missing or stale test.
    The summary names the missing tests, or counts them (``short``) when the names make it too long."""
    meta = texts(ctx.k, rule_id)
    gaps = [s for s in statuses if not s.usable]
    summary = fill(ctx, meta["summary"], missing=", ".join(s.title for s in gaps), **fields)
    if len(summary) >= MAX_SUMMARY:
        summary = fill(ctx, meta["summary"], missing=short.format(gaps=len(gaps), total=len(statuses)), **fields)
    suggestions = [lab_order(ctx, s.concept, meta["suggestion"].format(title=s.title))
                   for s in gaps if s.status in ORDERABLE]
    findings = [s.describe() for s in statuses] + context
    return card(ctx, rule_id, summary, findings, suggestions=suggestions, selection="any")


def lab_order(ctx: RuleContext, concept: str, label: str) -> Suggestion:
    """A one-click draft ServiceRequest for a lab concept, coded from its value set."""
    vs = ctx.k.vs(f"lab-{concept}") if f"lab-{concept}" in ctx.k.valuesets else None
    title = LabStatus(concept, "missing", 0).title
    code: dict[str, Any] = {"text": title}
    first = vs.first_code(LOINC) if vs else None
    if first and concept not in TEXT_ONLY_ORDERS:
        code["coding"] = [{"system": LOINC, "code": first[0], "display": first[1]}]
    return service_request(ctx, code, label)


def service_request(ctx: RuleContext, code: dict, label: str) -> Suggestion:
    resource = {"resourceType": "ServiceRequest", "status": "draft", "intent": "order", "code": code,
                "subject": {"reference": ctx.patient_ref}}
    return Suggestion(label=label, actions=[Action(type="create", description=label, resource=resource)])


def delete_draft(entry: MedEntry, label: str) -> Suggestion:
    return Suggestion(label=label, actions=[Action(type="delete", description=label, resourceId=entry.reference)])


def update_resource(resource: dict, label: str) -> Suggestion:
    return Suggestion(label=label, actions=[Action(type="update", description=label, resource=resource)])


def med_line(entry: MedEntry) -> str:
    by = " (recognised by name)" if entry.matched_by == "text" else ""
    when = f", {fmt_date(entry.date)}" if entry.date and not entry.is_draft else ""
    kind = "drafted" if entry.is_draft else (entry.status or "on record")
    return f"{entry.name}{by} ({kind}{when})"
