"""Shared fixtures: the Flask app factory with auth off and an in-memory
feedback store, its test client, and paths to the repository's test data
(fixtures/ and the CDS Hooks spec examples in tests/conformance/)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cds_service import create_app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SCENARIOS = FIXTURES / "scenarios"
# the CDS Hooks spec's example messages and keys, copied with their origin (tests/conformance/README.md)
CONFORMANCE = Path(__file__).resolve().parent / "conformance"
NOW = "2026-11-25T12:00:00Z"


def load_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture
def config():
    return {"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW, "CDS_LOG_LEVEL": "WARNING"}


@pytest.fixture
def app(config):
    return create_app(config)


@pytest.fixture
def client(app):
    return app.test_client()


def typed_and_plain_answers(raw: bytes, service, app) -> tuple[tuple[int, object], tuple[int, object]]:
    """The service's answer to the body decoded typed (its own decoder) and as plain JSON."""
    import dataclasses
    plain = dataclasses.replace(service, prefetch_models={})
    assert plain.decoder is None
    return _answer(raw, service, app), _answer(raw, plain, app)


def _answer(raw: bytes, service, app) -> tuple[int, object]:
    """(200, [response, data-quality notes]) for a body decoded with the service's decoder, card
    uuids blanked; (status, message) when the request is refused."""
    from cds_service.decode import decode_body
    from cds_service.errors import CDSError
    from cds_service.invocation import hook_input
    try:
        hook_in, _ = hook_input(decode_body(raw, service.decoder), service, app.config)
        answer = service.evaluate(hook_in).to_json()
        notes = service.explain(hook_in)["data_quality"]
    except CDSError as exc:
        return exc.status, exc.message
    text = json.dumps([answer, notes], sort_keys=True)
    return 200, json.loads(text, object_hook=lambda o: {k: ("-" if k == "uuid" else v) for k, v in o.items()})


def chart_state(*resources, pool=None, **build):
    """The PatientState of a chart at the fixtures' instant (fixtures/build_scenarios.py NOW, PID):
    each resource pooled as a prefetch delivers it; ``build``: build_state's keyword arguments."""
    from cds_service.pool import ResourcePool
    from fixtures.build_scenarios import NOW as AT
    from fixtures.build_scenarios import PID
    from hooks.builder import build_state
    pool = ResourcePool() if pool is None else pool
    for r in resources:
        pool.add(r)
    return build_state(pool, PID, AT, **build)


def scenario_names() -> list[str]:
    return sorted(p.name for p in SCENARIOS.iterdir() if (p / "request.json").exists())


def wait_until(predicate, seconds: float = 5.0) -> bool:
    """Poll ``predicate`` every 20 ms until it holds or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())
