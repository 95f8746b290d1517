"""Client profiles: how a CDSResponse is written for the CDS client that called.

``spec`` is CDS Hooks 2.0 as written (``CDSResponse.to_json``, unchanged). ``epic`` follows what
Epic's CDS Hooks documentation says its client does with a response:

- ``source.topic.code`` must be a static alphanumeric code of at most 100 characters (an override is
  remembered by it): each service maps its topic codes to such codes (``TopicCodes``, given by the
  service). Feedback is not mapped back by it: none of Epic's documented feedback messages carries
  the code, so feedback is attributed by the card ``uuid`` through the issued-card log, as in the spec;
- only ``selectionBehavior: "any"`` is supported, and one action per suggestion. A suggestion with
  several actions (a swap: delete and create) is never split into suggestions that could be accepted
  one without the other (a clinician accepting only the create would double the order): its first
  delete (else its first action) stays the button, with the suggestion's uuid, and each other action
  becomes a line of the detail saying it goes with that button. No uuid is made up: feedback can only
  name a suggestion uuid the issued-card log holds;
- ``action.description`` is what the clinician sees (the suggestion label is not used): every action
  has one;
- order details in a created order are not applied (Epic takes the defaults of its medication record),
  so the dose of every created MedicationRequest is written into the card detail, and its description
  is made to state it;
- create and delete actions on unsigned orders are listed, update is not: an update action becomes a
  line of the detail ("To do in the order: ..."), with no suggestion left that only looks clickable;
- ``isRecommended`` pre-selects a suggestion: on a card whose suggestions are alternatives the
  preferred one is marked and the detail says they are alternatives (``Card.alternatives``), and each
  dose to enter names the suggestion it belongs to, "for the one you choose";
- RxNorm codings in created MedicationRequests use the RxNorm OID system.

Detection (``choose``): ``CDS_CLIENT_PROFILE`` = ``auto`` picks ``epic`` when the request's top-level
``extension`` object has a key starting ``com.epic.cdshooks.``, else ``spec``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from .cards import Card, CDSResponse
from .jsonbytes import dumps

SPEC, EPIC, AUTO = "spec", "epic", "auto"
PROFILES = (AUTO, SPEC, EPIC)
EPIC_EXTENSION_PREFIX = "com.epic.cdshooks."
RXNORM_URL = "http://www.nlm.nih.gov/research/umls/rxnorm"
RXNORM_OID = "urn:oid:2.16.840.1.113883.6.88"
EPIC_TOPIC_MAX = 100
ALPHANUMERIC = re.compile(r"^[A-Za-z0-9]+$")
WHY = "\n\n**Why:**"  # where the findings of a card's detail end (hooks.rules.common.card)
TODO = "To do in the order"
DOSE_NOTE = "**Doses to enter in the order** (a suggested order opens with its default details, not these):"
DOSE_NOTE_CHOICE = ("**Doses to enter in the order, for the one you choose** (a suggested order opens with its "
                    "default details, not these):")


@dataclass(frozen=True)
class TopicCodes:
    """A service's topic code (``source.topic.code``) -> the alphanumeric code a client needs. Codes
    are unique: Epic remembers an override by the code, so two topics sharing one would share it."""
    system: str
    codes: Mapping[str, str]

    def __post_init__(self) -> None:
        for topic, code in self.codes.items():
            if not ALPHANUMERIC.match(code) or len(code) > EPIC_TOPIC_MAX:
                raise ValueError(f"topic code for {topic} must be alphanumeric, at most {EPIC_TOPIC_MAX}: {code!r}")
        if len(set(self.codes.values())) != len(self.codes):
            raise ValueError("topic codes must be unique")

    def code_for(self, topic: str) -> str:
        """The client code of a topic; an unmapped one (a test keeps every rule mapped) as its
        alphanumeric characters, so the answer stays valid."""
        return self.codes.get(topic) or alphanumeric(topic)


def alphanumeric(code: str) -> str:
    """A code as Epic accepts it: its letters and digits, at most 100 (a topic with no table entry)."""
    return re.sub(r"[^A-Za-z0-9]", "", code)[:EPIC_TOPIC_MAX] or "topic"


def choose(setting: str, extension: Any) -> str:
    """The profile for one request: the configured one, or (``auto``) ``epic`` when the request's
    top-level ``extension`` object carries a ``com.epic.cdshooks.*`` key."""
    if setting != AUTO:
        return setting
    if isinstance(extension, dict) and any(isinstance(k, str) and k.startswith(EPIC_EXTENSION_PREFIX)
                                           for k in extension):
        return EPIC
    return SPEC


def render(response: CDSResponse, profile: str, topics: TopicCodes | None) -> bytes:
    """The response body for the client's profile (the spec profile is ``to_json`` as it is)."""
    if profile != EPIC:
        return dumps(response.to_json())
    return dumps(epic_json(response, topics))


def body_for(response: CDSResponse, request: Any, setting: str, topics: TopicCodes | None) -> bytes:
    """The response body for this request (a CDSRequest: its ``extension`` picks the profile)."""
    return render(response, choose(setting, request.extension), topics)


def epic_json(response: CDSResponse, topics: TopicCodes | None) -> dict[str, Any]:
    """The response as Epic's client reads it (see the module docstring). The model is not changed:
    the issued-card log and the metrics keep the rule ids."""
    out = response.to_json()
    for card, written in zip(response.cards, out["cards"]):
        _epic_card(card, written, topics)
    for action in out.get("systemActions", ()):
        _epic_created(action)
    return out


def _epic_card(card: Card, out: dict[str, Any], topics: TopicCodes | None) -> None:
    topic = out.get("source", {}).get("topic")
    if topic is not None:
        topic["code"] = topics.code_for(topic["code"]) if topics else alphanumeric(topic["code"])
        if topics:
            topic["system"] = topics.system
    suggestions: list[dict[str, Any]] = []
    todo: list[str] = []
    doses: list[str] = []
    for model, written in zip(card.suggestions, out.get("suggestions", ())):
        kept = []
        for action in written.get("actions", ()):
            action["description"] = action.get("description") or written["label"]
            if action["type"] == "update":
                todo.append(action["description"])
                continue
            dose = _epic_created(action)
            if dose:
                doses.append(f"For \"{written['label']}\": {dose}" if card.alternatives else dose)
            kept.append(action)
        if not written.get("actions"):
            todo.append(written["label"])  # nothing to apply: a line to read, not a button
        if not kept:
            continue
        button = next((a for a in kept if a["type"] == "delete"), kept[0])
        todo.extend(f"{a['description']} (goes with \"{button['description']}\": do both or neither)"
                    for a in kept if a is not button)
        piece = {**written, "actions": [button]}
        if card.alternatives and model.choice:
            piece["isRecommended"] = model.choice == "preferred"
        suggestions.append(piece)
    if card.alternatives and not any(s.get("isRecommended") for s in suggestions):
        for s in suggestions:  # the default was no button (an update): no alternatives left to mark
            s.pop("isRecommended", None)
    if suggestions:
        out["suggestions"] = suggestions
        out["selectionBehavior"] = "any"
    else:
        out.pop("suggestions", None)
        out.pop("selectionBehavior", None)
    lines = []
    if card.alternatives and any(s.get("isRecommended") for s in suggestions):
        lines.append(f"**Alternatives:** {card.alternatives}")
    if doses:
        note = DOSE_NOTE_CHOICE if card.alternatives else DOSE_NOTE
        lines.append(note + "\n" + "\n".join(f"- {d}" for d in doses))
    if todo:
        lines.append("\n".join(f"- {TODO}: {t}" for t in todo))
    if lines:
        out["detail"] = _insert(out.get("detail", ""), "\n\n".join(lines))


def _insert(detail: str, block: str) -> str:
    """The block after the card's findings (before its "Why"), or at the end."""
    head, sep, tail = detail.partition(WHY)
    if not head.strip():
        return block + (sep + tail if sep else "")
    return f"{head}\n\n{block}{sep}{tail}"


def _epic_created(action: dict[str, Any]) -> str | None:
    """A created MedicationRequest with the RxNorm OID; returns its dose as text (for the detail) and
    makes its description, if it has one (a system action need not), state it. None for anything else."""
    resource = action.get("resource")
    if action.get("type") != "create" or not isinstance(resource, dict) or \
            resource.get("resourceType") != "MedicationRequest":
        return None
    _rxnorm_oid(resource)
    dose = _dose(resource)
    if dose is None:
        return None
    text, amounts = dose
    description = action.get("description")
    if description and not states_dose(description, amounts):
        action["description"] = f"{description} ({text})"
    medication = (resource.get("medicationCodeableConcept") or {}).get("text")
    return f"{medication}: {text}" if medication and medication.lower() not in text.lower() else text


def _rxnorm_oid(value: Any) -> None:
    if isinstance(value, dict):
        if value.get("system") == RXNORM_URL:
            value["system"] = RXNORM_OID
        for v in value.values():
            _rxnorm_oid(v)
    elif isinstance(value, list):
        for v in value:
            _rxnorm_oid(v)


def _dose(resource: dict[str, Any]) -> tuple[str, list[str]] | None:
    """(the dose as text, the ways the amount is written) of the first dosage with a dose quantity."""
    for dosage in resource.get("dosageInstruction") or ():
        if not isinstance(dosage, dict):
            continue
        for dr in dosage.get("doseAndRate") or ():
            quantity = dr.get("doseQuantity") if isinstance(dr, dict) else None
            if not isinstance(quantity, dict) or not isinstance(quantity.get("value"), (int, float)):
                continue
            value, unit = float(quantity["value"]), quantity.get("unit") or quantity.get("code") or ""
            return (dosage.get("text") or f"{value:g} {unit}"), amount_texts(value, unit)
    return None


def amount_texts(value: float, unit: str) -> list[str]:
    """The ways a dose amount is written in a text: 28 g, 28.0 g, 1000 mg, 1,000 mg."""
    texts = {f"{value:g} {unit}"}
    if value == round(value, 1):
        texts.add(f"{value:.1f} {unit}")
    if value == round(value):
        texts |= {f"{value:.0f} {unit}", f"{value:,.0f} {unit}"}
    return sorted(texts)


def states_dose(text: str, amounts: list[str]) -> bool:
    """Whether the text states one of the amounts (as a whole number: 10 g is not 0 g)."""
    return any(re.search(rf"(?<![\d.,]){re.escape(a)}\b", text) for a in amounts)
