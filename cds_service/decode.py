"""Decoding a request body: straight into typed structs for the prefetch keys a
service models (``ServiceDefinition.prefetch_models``), else plain JSON.

Parsing the body is the largest cost of a request, and most of it is the chart's
Observations. A schema-directed decoder (msgspec) skips the elements no rule reads
and builds slot objects instead of dicts. It is all or nothing per request: a body
that does not fit the schema (a Bundle entry of a type the key does not model and
not a search's OperationOutcome, an entry without resourceType, an object where an
array belongs, an unknown prefetch key) is parsed again as plain JSON, which is
what every request got before, and the service converts it resource by resource."""
from __future__ import annotations

import json
from typing import Any, ClassVar, Iterable, Literal, Mapping, Optional, Union

import msgspec
import orjson

from .errors import BadRequest

_OPTIONS = dict(omit_defaults=True, gc=False)
ENVELOPE_FIELDS = ("hook", "hookInstance", "fhirServer", "fhirAuthorization", "context", "extension")


class TypedBundle(msgspec.Struct, dict=True, omit_defaults=True):
    """A prefetched Bundle decoded typed: its entries are structs of the key's resource models,
    or a search's OperationOutcome. It keeps the request body it came from, so that a resource
    can be had as the EHR sent it (``original``): a card that suggests updating a resource must
    send the whole resource back, not the elements the model holds."""

    resource_types: ClassVar[frozenset[str]] = frozenset()  # the types its entries can be (not OperationOutcome)

    def attach(self, raw: bytes, key: str) -> None:
        self._source = (raw, key)

    def original(self, resource: Any) -> dict | None:
        """The plain JSON of this Bundle's entry holding ``resource`` (the same object), parsed
        from the request body on first use; None when it is not one of its entries."""
        for i, entry in enumerate(self.entry or ()):  # type: ignore[attr-defined]
            if entry.resource is resource:
                plain = self.__dict__.get("_plain")
                if plain is None:
                    raw, key = self.__dict__["_source"]
                    plain = self._plain = plain_json(raw)["prefetch"][key]["entry"]
                return plain[i]["resource"]
        return None


class SearchOutcome(msgspec.Struct, tag_field="resourceType", tag="OperationOutcome", **_OPTIONS):
    """An OperationOutcome entry of a searchset (search.mode "outcome"): kept, never read."""
    resourceType: ClassVar[str] = "OperationOutcome"


def bundle_model(models: type | tuple[type, ...]) -> type[TypedBundle]:
    """A Bundle whose entries are resources of ``models`` (structs tagged by resourceType), or
    the OperationOutcome a server may add to a search result."""
    models = models if isinstance(models, tuple) else (models,)
    name = models[0].__name__
    entry = msgspec.defstruct(f"{name}Entry", [("resource", Optional[Union[(*models, SearchOutcome)]], None)],
                              **_OPTIONS)
    # total and link say whether the search arrived whole (cds_service.prefetch.cut_short)
    bundle = msgspec.defstruct(f"{name}Bundle",
                               [("resourceType", Literal["Bundle"]), ("entry", Optional[list[entry]], None),  # type: ignore[valid-type]
                                ("total", Any, None), ("link", Any, None)],
                               bases=(TypedBundle,), omit_defaults=True)
    bundle.resource_types = frozenset(m.__struct_config__.tag for m in models)  # what its entries can be
    return bundle


def request_decoder(prefetch_keys: Iterable[str],
                    models: Mapping[str, type | tuple[type, ...]]) -> msgspec.json.Decoder | None:
    """A decoder for requests to a service with these prefetch keys, ``models`` giving the
    resource type (or types) of the keys to decode typed; None when it models none."""
    if not models:
        return None
    keys = []
    for key in prefetch_keys:
        model = models.get(key)
        kind = Union[bundle_model(model), None, msgspec.UnsetType] if model else Any
        keys.append((key, kind, msgspec.UNSET))
    prefetch = msgspec.defstruct("Prefetch", keys, forbid_unknown_fields=True, **_OPTIONS)
    envelope = msgspec.defstruct("Request", [(name, Any, msgspec.UNSET) for name in ENVELOPE_FIELDS]
                                 + [("prefetch", Union[prefetch, None, msgspec.UnsetType], msgspec.UNSET)],
                                 **_OPTIONS)
    return msgspec.json.Decoder(envelope)


def _as_body(envelope: msgspec.Struct, raw: bytes) -> dict[str, Any]:
    body = {name: getattr(envelope, name) for name in ENVELOPE_FIELDS if getattr(envelope, name) is not msgspec.UNSET}
    prefetch = envelope.prefetch  # type: ignore[attr-defined]
    if prefetch is not msgspec.UNSET:
        body["prefetch"] = prefetch if prefetch is None else {
            key: getattr(prefetch, key) for key in prefetch.__struct_fields__
            if getattr(prefetch, key) is not msgspec.UNSET}
        for key, value in (body["prefetch"] or {}).items():
            if isinstance(value, TypedBundle):
                value.attach(raw, key)
    return body


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")  # the standard library would read NaN and Infinity


def decode_body(raw: bytes, decoder: msgspec.json.Decoder | None = None) -> Any:
    """The request body as JSON, with the prefetch typed where ``decoder`` (from
    ``request_decoder``) fits it; 400 when it is not JSON at all."""
    if decoder is not None:
        try:
            return _as_body(decoder.decode(raw), raw)
        except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError):
            pass  # not the modelled shape (or not JSON): plain JSON decides
    try:
        return plain_json(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc})") from None


def plain_json(raw: bytes) -> Any:
    """The body as plain JSON; ValueError (orjson's reason) when it is not JSON. orjson rejects invalid
    UTF-8 and nesting deeper than 1024 levels as JSON errors, and also numbers beyond a double (1e400,
    a 400-digit integer), which are valid JSON: the standard library reads those (inf, a big int) and
    the readers make them data-quality notes."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(raw, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise ValueError(str(exc)[:80]) from None
