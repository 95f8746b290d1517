"""Golden scenarios: every folder in fixtures/scenarios runs through the HTTP
endpoint; the rules named in expected.json must fire with their indicator,
the ones listed as quiet must not, and every response is spec-shaped."""
from __future__ import annotations

import pytest

from cds_service.cards import CDSResponse

from .conftest import SCENARIOS, load_json, scenario_names


@pytest.mark.parametrize("name", scenario_names())
def test_scenario(name, client):
    request = load_json(SCENARIOS / name / "request.json")
    expected = load_json(SCENARIOS / name / "expected.json")
    resp = client.post(f"/cds-services/{expected['service']}", json=request)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    CDSResponse.from_json(body)  # parses back: summaries, indicators, selectionBehavior all valid
    fired = {c["source"]["topic"]["code"]: c["indicator"] for c in body["cards"]}
    assert len(fired) == len(body["cards"]), "one card per rule"
    for rule, indicator in expected["fire"].items():
        assert fired.get(rule) == indicator, f"{rule} expected {indicator}; fired: {fired}"
    for rule in expected["quiet"]:
        assert rule not in fired, f"{rule} must not fire; fired: {fired}"
    if expected["no_cards"]:
        assert body["cards"] == []
    for card in body["cards"]:
        assert len(card["summary"]) < 140
        assert card["detail"].strip()
        assert card["source"]["topic"]["system"] == "urn:mg-cds:rule"
        if card.get("suggestions"):
            assert card["selectionBehavior"] in ("at-most-one", "any")


def test_rituximab_consider_links_the_cochrane_review(client):
    body = client.post("/cds-services/mg-patient-view",
                       json=load_json(SCENARIOS / "pv-refractory-after-ivig" / "request.json")).get_json()
    card = next(c for c in body["cards"] if c["source"]["topic"]["code"] == "rituximab-consider")
    assert card["links"] == [{"label": "Rituximab for myasthenia gravis (Cochrane Database Syst Rev, 2025)",
                              "url": "https://doi.org/10.1002/14651858.CD014574", "type": "absolute"}]
    assert "Cochrane" in card["detail"]
