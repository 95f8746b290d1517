"""Prometheus metrics (prometheus-client): request latency per service, cards
per rule and indicator, prefetch fetches and failures, feedback outcomes per
rule, tolerated request deviations. Under gunicorn set PROMETHEUS_MULTIPROC_DIR so /metrics sums workers."""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

REQUEST_SECONDS = Histogram("mgcds_request_seconds", "Request latency by route and service",
                            ["route", "service", "status"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
CARDS = Counter("mgcds_cards_total", "Cards returned", ["service", "rule", "indicator"])
PREFETCH_FETCHES = Counter("mgcds_prefetch_fetch_total", "Prefetch keys fetched from fhirServer", ["key", "outcome"])
FEEDBACK = Counter("mgcds_feedback_total", "Feedback outcomes", ["service", "rule", "outcome"])
# deviation: one of cds_service.request.TOLERATED ("field:kind"), a bounded set
TOLERATED_DEVIATIONS = Counter("mgcds_tolerated_deviations_total",
                               "Requests accepted though a field no rule reads deviated from the spec", ["deviation"])


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
