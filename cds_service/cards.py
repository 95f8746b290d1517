"""CDS Hooks 2.0 response model. ``to_json`` emits spec-exact JSON: optional
fields that are None or empty are left out, never sent as null or []."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .ids import new_uuid

INDICATORS = ("info", "warning", "critical")
SELECTION_BEHAVIORS = ("at-most-one", "any")
ACTION_TYPES = ("create", "update", "delete")
LINK_TYPES = ("absolute", "smart")
MAX_SUMMARY = 140


def _compact(value: Any) -> Any:
    if isinstance(value, _Model):
        return value.to_json()
    if isinstance(value, dict):
        out = {k: _compact(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if not _empty(v)}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (list, dict, str)) and len(value) == 0)


INTERNAL = {"internal": True}  # field metadata: kept in the model, never sent


class _Model:
    def to_json(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            if f.metadata.get("internal"):
                continue
            value = _compact(getattr(self, f.name))
            if not _empty(value):
                out[f.name] = value
        return out


@dataclass
class Coding(_Model):
    code: str
    system: str | None = None
    display: str | None = None

    @classmethod
    def from_json(cls, d: dict) -> "Coding":
        return cls(code=d["code"], system=d.get("system"), display=d.get("display"))


@dataclass
class Source(_Model):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None

    @classmethod
    def from_json(cls, d: dict) -> "Source":
        topic = d.get("topic")
        return cls(label=d["label"], url=d.get("url"), icon=d.get("icon"),
                   topic=Coding.from_json(topic) if topic else None)


@dataclass
class Link(_Model):
    label: str
    url: str
    type: str = "absolute"
    appContext: str | None = None
    autolaunchable: bool | None = None

    def __post_init__(self) -> None:
        if self.type not in LINK_TYPES:
            raise ValueError(f"link type must be one of {LINK_TYPES}")

    @classmethod
    def from_json(cls, d: dict) -> "Link":
        return cls(label=d["label"], url=d["url"], type=d["type"], appContext=d.get("appContext"),
                   autolaunchable=d.get("autolaunchable"))


@dataclass
class Action(_Model):
    type: str
    description: str | None = None
    resource: dict | None = None
    resourceId: str | None = None

    def __post_init__(self) -> None:
        if self.type not in ACTION_TYPES:
            raise ValueError(f"action type must be one of {ACTION_TYPES}")
        if self.type == "delete" and not self.resourceId:
            raise ValueError("a delete action needs resourceId")
        if self.type in ("create", "update") and not self.resource:
            raise ValueError(f"a {self.type} action needs resource")

    @classmethod
    def from_json(cls, d: dict) -> "Action":
        return cls(type=d["type"], description=d.get("description"), resource=d.get("resource"),
                   resourceId=d.get("resourceId"))


@dataclass
class Suggestion(_Model):
    label: str
    uuid: str | None = field(default_factory=new_uuid)
    isRecommended: bool | None = None
    actions: list[Action] = field(default_factory=list)
    # The rule a suggestion comes from when it is not its card's (a folded also-due card): feedback
    # accepting it is attributed to that rule. Internal: never serialised.
    rule_id: str | None = field(default=None, metadata=INTERNAL)
    # On a card with ``alternatives``: "preferred" (the default a client may pre-select) or "alternative".
    # Internal: a client profile renders it (cds_service.profiles), the spec profile never sends it.
    choice: str | None = field(default=None, metadata=INTERNAL)

    @classmethod
    def from_json(cls, d: dict) -> "Suggestion":
        return cls(label=d["label"], uuid=d.get("uuid"), isRecommended=d.get("isRecommended"),
                   actions=[Action.from_json(a) for a in d.get("actions", [])])


@dataclass
class Card(_Model):
    summary: str
    indicator: str
    source: Source
    uuid: str | None = field(default_factory=new_uuid)
    detail: str | None = None
    suggestions: list[Suggestion] = field(default_factory=list)
    selectionBehavior: str | None = None
    overrideReasons: list[Coding] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    # When suggestions are alternatives (one of them, not all): the sentence saying so, with its source
    # and which one is the default. Internal: a client profile renders it (cds_service.profiles).
    alternatives: str | None = field(default=None, metadata=INTERNAL)

    def __post_init__(self) -> None:
        if self.indicator not in INDICATORS:
            raise ValueError(f"indicator must be one of {INDICATORS}")
        if len(self.summary) >= MAX_SUMMARY:
            raise ValueError(f"summary must be shorter than {MAX_SUMMARY} characters: {self.summary!r}")
        if self.selectionBehavior is not None and self.selectionBehavior not in SELECTION_BEHAVIORS:
            raise ValueError(f"selectionBehavior must be one of {SELECTION_BEHAVIORS}")
        if self.suggestions and self.selectionBehavior is None:
            raise ValueError("selectionBehavior is required when a card has suggestions")

    @property
    def rule_id(self) -> str | None:
        return self.source.topic.code if self.source.topic else None

    @classmethod
    def from_json(cls, d: dict) -> "Card":
        return cls(summary=d["summary"], indicator=d["indicator"], source=Source.from_json(d["source"]),
                   uuid=d.get("uuid"), detail=d.get("detail"),
                   suggestions=[Suggestion.from_json(s) for s in d.get("suggestions", [])],
                   selectionBehavior=d.get("selectionBehavior"),
                   overrideReasons=[Coding.from_json(c) for c in d.get("overrideReasons", [])],
                   links=[Link.from_json(x) for x in d.get("links", [])])


@dataclass
class CDSResponse(_Model):
    cards: list[Card] = field(default_factory=list)
    systemActions: list[Action] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out.setdefault("cards", [])  # "cards" is required, even when empty
        return out

    @classmethod
    def from_json(cls, d: dict) -> "CDSResponse":
        return cls(cards=[Card.from_json(c) for c in d.get("cards", [])],
                   systemActions=[Action.from_json(a) for a in d.get("systemActions", [])])
