"""Shared fixtures: the Flask app factory with auth off and an in-memory
feedback store, its test client, and paths to shared reference data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_service import create_app

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SCENARIOS = FIXTURES / "scenarios"
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance" / "cds-hooks-examples"
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


def scenario_names() -> list[str]:
    return sorted(p.name for p in SCENARIOS.iterdir() if (p / "request.json").exists())
