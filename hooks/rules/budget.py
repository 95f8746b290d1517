"""The patient-view card budget: every critical and warning card, and at most
``patient_view_max_info_cards`` info cards; more info cards are folded into one
``also-due`` card that names each folded rule with its findings and keeps each
suggestion (its uuid too), labelled with the rule it comes from."""
from __future__ import annotations

from cds_service.cards import MAX_SUMMARY, Card, Coding, Source

from .common import RULE_SYSTEM, RuleContext, fill, texts
from .registry import PATIENT, rule


@rule("also-due", hooks=PATIENT, thresholds=("patient_view_max_info_cards",), fold=True)
def fold_info(ctx: RuleContext, cards: list[Card]) -> list[Card]:
    """When more info-level cards fire on patient-view than the budget allows, then show them as one
    info card listing each folded rule and its findings, with all their suggestions."""
    info = [c for c in cards if c.indicator == "info"]
    if len(info) <= int(ctx.t("patient_view_max_info_cards")):
        return cards
    meta = texts(ctx.k, "also-due")
    names = [c.source.topic.display or c.rule_id for c in info]
    summary = fill(ctx, meta["summary"], items="; ".join(names))
    if len(summary) >= MAX_SUMMARY:
        summary = fill(ctx, meta["summary"], items=f"{len(info)} items")
    sections, whys, sources, suggestions, links = [], [], [], [], []
    for c in info:
        body, _, rest = (c.detail or "").partition("\n\n**Why:** ")
        why, _, source = rest.partition("\n\n*Source:* ")
        sections.append(f"**{c.rule_id}**: {c.summary}\n{body}")
        whys.append(f"- {c.rule_id}: {why}")
        if source and source not in sources:
            sources.append(source)
        for s in c.suggestions:
            s.label = meta["suggestion"].format(label=s.label, rule=c.rule_id)
            s.rule_id = c.rule_id
            suggestions.append(s)
        links += [link for link in c.links if link.url not in {x.url for x in links}]
    detail = "\n\n".join(sections + ["**Why:**\n" + "\n".join(whys), "*Source:* " + "; ".join(sources)])
    folded = Card(summary=summary, indicator="info", detail=detail,
                  source=Source(label=info[0].source.label,
                                topic=Coding(code="also-due", system=RULE_SYSTEM, display=meta["display"])),
                  suggestions=suggestions, selectionBehavior="any" if suggestions else None, links=links)
    return [c for c in cards if c.indicator != "info"] + [folded]
