"""Selective validation with fhir.resources R4B: only resources a rule reads
are validated (full validation of every prefetched resource is the largest
cost of a naive service). Verdicts are remembered per exact resource content:
an EHR sends the same chart again for every order-select while an order is
edited, and for order-sign."""
from __future__ import annotations

import hashlib
import importlib
import os
from functools import lru_cache
from typing import Any

import orjson
from pydantic import ValidationError

from .memo import remember

# CDS_VALIDATION_CACHE: how many verdicts to keep (about 100 bytes each); 0 validates every time
VERDICTS_MAX = int(os.environ.get("CDS_VALIDATION_CACHE", "20000"))
_verdicts: dict[bytes, str | None] = {}
_UNSEEN = object()


@lru_cache(maxsize=None)
def _model(resource_type: str):
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    except ImportError:
        return None
    return getattr(module, resource_type, None)


def validation_error(resource: Any) -> str | None:
    """None when the resource (plain JSON) is valid FHIR R4 (R4B models), else a short reason."""
    if VERDICTS_MAX <= 0:
        return _validate(resource)
    try:
        key = hashlib.blake2b(orjson.dumps(resource), digest_size=16).digest()
    except (orjson.JSONEncodeError, TypeError):
        return _validate(resource)
    verdict = _verdicts.get(key, _UNSEEN)  # one lookup: another thread may clear the dict meanwhile
    if verdict is not _UNSEEN:
        return verdict
    return remember(_verdicts, key, _validate(resource), VERDICTS_MAX)


def _validate(resource: dict) -> str | None:
    model = _model(str(resource.get("resourceType")))
    if model is None:
        return f"unknown resourceType '{resource.get('resourceType')}'"
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid')}"[:160]
    except (ValueError, TypeError) as exc:
        return str(exc)[:160]
    return None
