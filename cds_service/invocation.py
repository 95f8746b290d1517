"""From a request body to the HookInput a service evaluates: validation,
prefetch completion and pooling. Shared by the invoke route, the preview
page and the CLI."""
from __future__ import annotations

from typing import Any

import requests

from . import clock
from .pool import ResourcePool
from .prefetch import PrefetchResult, complete_prefetch
from .request import parse_request
from .service import HookInput, ServiceDefinition


def hook_input(body: Any, service: ServiceDefinition, config: dict,
               session: requests.Session) -> tuple[HookInput, PrefetchResult]:
    req = parse_request(body, service.hook)
    completed = complete_prefetch(req, service, config, session)
    pool = ResourcePool()
    pool.add_all(completed.data.items())
    return HookInput(request=req, resources=pool, now=clock.now(config), notes=completed.notes,
                     unavailable=completed.unavailable), completed
