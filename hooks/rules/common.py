"""What every rule shares: the context it reads, and the builders that turn
its findings into CDS Hooks cards with the texts from knowledge/rules.json."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from cds_service.cards import Action, Card, Coding, Link, Source, Suggestion

from ..fhir_read import fmt_date
from ..knowledge import Knowledge
from ..state import LabStatus, MedEntry, PatientState

RULE_SYSTEM = "urn:mg-cds:rule"
LOINC = "http://loinc.org"
# Concepts whose codes on file are result components, not an orderable test:
# IGRA nil/mitogen tubes, single blood-count and eGFR results. Ordered by name.
TEXT_ONLY_ORDERS = {"tb", "cbc", "chemistry"}


@dataclass
class RuleContext:
    state: PatientState
    hook: str
    drafts: list[MedEntry] = field(default_factory=list)             # the drafts this call evaluates
    draft_procedures: list[MedEntry] = field(default_factory=list)

    @property
    def k(self) -> Knowledge:
        return self.state.knowledge

    @property
    def patient_ref(self) -> str:
        return f"Patient/{self.state.patient_id}"

    def t(self, name: str) -> Any:
        return self.k.threshold(name)

    def drafts_of(self, cls: str) -> list[MedEntry]:
        return [d for d in self.drafts if d.has(cls)]

    @property
    def severe(self) -> bool:
        return self.state.grade is not None and self.state.grade >= 3


Rule = Callable[[RuleContext], "Card | None"]


def texts(k: Knowledge, rule_id: str) -> dict[str, Any]:
    return k.rules["rules"][rule_id]


def card(ctx: RuleContext, rule_id: str, summary: str, findings: list[str], *, why_key: str = "why",
         indicator: str | None = None, suggestions: list[Suggestion] | None = None,
         selection: str = "at-most-one") -> Card:
    """One card: summary, the patient's own findings, the reason and its citations."""
    meta = texts(ctx.k, rule_id)
    cites = "; ".join(ctx.k.citations[c]["text"] for c in meta.get("citations", []))
    lines = [f"- {f}" for f in findings]
    detail = "\n".join(lines + ["", f"**Why:** {meta[why_key]}", "", f"*Source:* {cites}"])
    override = ctx.k.rules["override_reasons"]
    reasons = [Coding(code=r["code"], system=override["system"], display=r["display"])
               for r in override["reasons"] if r["code"] in override["by_rule"].get(rule_id, [])]
    links = [Link(label=ctx.k.citations[c]["label"], url=ctx.k.citations[c]["url"])
             for c in meta.get("citations", []) if ctx.k.citations[c].get("url")]
    return Card(summary=summary, indicator=indicator or meta["indicator"], detail=detail,
                source=Source(label=ctx.k.rules["source_label"],
                              topic=Coding(code=rule_id, system=RULE_SYSTEM, display=meta["display"])),
                suggestions=suggestions or [], selectionBehavior=selection if suggestions else None,
                overrideReasons=reasons, links=links)


def lab_gaps_card(ctx: RuleContext, rule_id: str, statuses: list[LabStatus], context: list[str],
                  short: str = "{gaps} tests", **fields: str) -> Card:
    """A card listing each test's status, with one order suggestion per missing or stale test.
    The summary names the missing tests, or counts them (``short``) when the names make it too long."""
    meta = texts(ctx.k, rule_id)
    gaps = [s for s in statuses if not s.usable]
    summary = meta["summary"].format(missing=", ".join(s.title for s in gaps), **fields)
    if len(summary) >= 140:
        summary = meta["summary"].format(missing=short.format(gaps=len(gaps), total=len(statuses)), **fields)
    suggestions = [lab_order(ctx, s.concept, meta["suggestion"].format(title=s.title))
                   for s in gaps if s.status in ("missing", "stale")]
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
