"""From a request body to the HookInput a service evaluates: validation,
prefetch completion and pooling. Shared by the invoke route, the preview
page and the CLI."""
from __future__ import annotations

from typing import Any

from . import clock
from .pool import ResourcePool
from .prefetch import PrefetchResult, complete_prefetch
from .request import parse_request
from .service import HookInput, ServiceDefinition


def hook_input(body: Any, service: ServiceDefinition, config: dict) -> tuple[HookInput, PrefetchResult]:
    req = parse_request(body, service.hook)
    pool = ResourcePool()
    pool.add_all(req.prefetch.items())
    medications = req.draft_medications()
    if medications:  # what a drafted order's medicationReference may point to
        pool.add_all([("draftOrders", {"resourceType": "Bundle", "entry": [{"resource": m} for m in medications]})])
    completed = complete_prefetch(req, service, config,
                                  resolvable=lambda reference: pool.resolve(reference) is not None)
    pool.add_all((key, completed.data[key]) for key in completed.fetched_keys)
    return HookInput(request=req, resources=pool, now=clock.now(config), notes=completed.notes,
                     unavailable=completed.unavailable, incomplete_types=completed.incomplete,
                     prefetched=completed.data, fetched_keys=completed.fetched_keys), completed
