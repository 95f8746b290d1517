"""Integration with a real FHIR server: @medplum/fhir-router over its in-memory repository
(tests/fhir_server), with real search (patient, status and code filters, _include, _sort,
_count) and paging links. Every scenario is loaded into one server under its own patient and
resource ids, beside the population fixture's patients; each service is then called without
prefetch, so that it fetches everything over HTTP, and must give the cards it gives with the
scenario's prefetch (a prefetch Bundle that says it holds only part of a search is compared as
the complete search the server gives: see charts.as_served)."""
from __future__ import annotations

from typing import Any

import pytest

from .conftest import FIXTURES, SCENARIOS, load_json, scenario_names
from .fhir_server.charts import as_served, card_keys, cds_client, chart, with_own_ids, without_prefetch
from .fhir_server.medplum import MedplumServer, medplum  # noqa: F401  (medplum is a fixture)

SCENARIO_NAMES = scenario_names()


def scenario_request(name: str) -> dict[str, Any]:
    return with_own_ids(load_json(SCENARIOS / name / "request.json"), f"s{SCENARIO_NAMES.index(name)}-")


@pytest.fixture(scope="module")
def loaded(medplum: MedplumServer) -> MedplumServer:  # noqa: F811
    """The server holding the population fixture's patients and every scenario's chart."""
    for path in sorted((FIXTURES / "population").glob("*.json")):
        medplum.load_bundle(load_json(path))
    for name in SCENARIO_NAMES:
        medplum.put_all(chart(scenario_request(name)))
    return medplum


@pytest.fixture(scope="module")
def client(loaded: MedplumServer):
    return cds_client(loaded.base)


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_fetched_cards_equal_prefetched_cards(loaded, client, name):
    body = as_served(scenario_request(name), loaded.base, loaded.token)
    service = load_json(SCENARIOS / name / "expected.json")["service"]
    expected = card_keys(client.post(f"/cds-services/{service}", json=body))
    fetched = card_keys(client.post(f"/cds-services/{service}", json=without_prefetch(body, loaded.base, loaded.token)))
    assert fetched == expected

