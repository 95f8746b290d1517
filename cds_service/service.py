"""What a CDS service is to the protocol layer: its discovery entry, its
prefetch templates, and a pure ``evaluate`` function from HookInput to a
CDSResponse. The MG services in ``hooks`` are instances of this."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, Callable

import msgspec

from .cards import CDSResponse
from .decode import request_decoder
from .pool import ResourcePool, key_contents
from .profiles import TopicCodes
from .request import CDSRequest

# The CDS Hooks specification this protocol layer implements, as discovery's `version` states it
# (CDS Hooks 3.0.0 ballot, "Discovery": "The semantic version of the CDS Hooks specification
# implemented by this service"). 2.0.1 is the published STU2 text (an errata release of 2.0.0).
CDS_HOOKS_VERSION = "2.0.1"


@dataclass
class HookInput:
    """Everything a service evaluates: the validated request, every prefetched
    or fetched resource pooled by type, the clock, and what could not be had."""
    request: CDSRequest
    resources: ResourcePool
    now: datetime
    notes: list[str] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)  # prefetch key -> reason
    # resource type -> why its data is not proven complete (cds_service.prefetch)
    incomplete_types: dict[str, str] = field(default_factory=dict)
    # what arrived, key -> value (prefetched and fetched), and the keys that were fetched
    prefetched: dict[str, Any] = field(default_factory=dict)
    fetched_keys: list[str] = field(default_factory=list)

    @property
    def context(self) -> dict[str, Any]:
        return self.request.context

    @property
    def incomplete(self) -> frozenset[str]:
        """Resource types whose data may be incomplete: a result can be shown, never proven absent."""
        return frozenset(self.incomplete_types)

    def prefetch_summary(self) -> dict[str, Any]:
        """Which keys held which resource types, what was fetched, what may be incomplete (explain)."""
        summary: dict[str, Any] = {"keys": key_contents(self.prefetched)}
        if self.fetched_keys:
            summary["fetched"] = list(self.fetched_keys)
        if self.incomplete_types:
            summary["incomplete"] = dict(self.incomplete_types)
        if self.unavailable:
            summary["unavailable"] = dict(self.unavailable)
        return summary


@dataclass(frozen=True)
class ServiceDefinition:
    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str]
    evaluate: Callable[[HookInput], CDSResponse]
    # Keys whose data the service cannot work without: 412 when unobtainable.
    required_prefetch: tuple[str, ...] = ()
    # Keys whose search holds only part of its type (a code-filtered search): they add results,
    # but only a full search of the type proves a result absent (cds_service.prefetch).
    partial_prefetch: tuple[str, ...] = ()
    usage_requirements: str | None = None
    # The version of the hook definition served (its `hookVersion`, e.g. "1.0"): discovery's hookVersion.
    hook_version: str | None = None
    # Optional: what the service read from the data, for people (preview page, mg-cds explain).
    explain: Callable[[HookInput], dict[str, Any]] | None = None
    # Prefetch key -> resource model (a msgspec struct), or models, its Bundle is decoded into
    # (cds_service.decode).
    prefetch_models: dict[str, type | tuple[type, ...]] = field(default_factory=dict)
    # Its topic codes -> the static alphanumeric codes a client profile needs (cds_service.profiles).
    topic_codes: TopicCodes | None = None

    @cached_property
    def decoder(self) -> msgspec.json.Decoder | None:
        return request_decoder(self.prefetch, self.prefetch_models)

    def discovery(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"hook": self.hook, "title": self.title, "description": self.description,
                                 "id": self.id, "prefetch": dict(self.prefetch)}
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        entry["version"] = CDS_HOOKS_VERSION
        if self.hook_version:
            entry["hookVersion"] = self.hook_version
        return entry
