"""Integration with a real FHIR server process: fhirsnake (PyPI), loaded with
fixture patients. Each service is called without prefetch, so that it
fetches everything over HTTP, and its cards must equal those it gives with
prefetch. fhirsnake ignores search parameters (it answers every search with
all resources of the type), so this also checks that other patients'
resources are filtered out."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cds_service import create_app

from .conftest import SCENARIOS, load_json

CASES = ["ivig-dose-too-high", "ivig-all-clear", "rituximab-no-screening", "rituximab-hbsag-positive", "pv-crisis-grade4",
         "pv-refractory-after-ivig", "pv-ivig-maintenance", "macrolide-grade3", "sign-ivig-with-plex", "pv-ici-grade3",
         "no-mg-azithromycin"]


def patient_request(index: int, name: str) -> dict:
    """The scenario with its own patient id and resource ids, so that all cases share one server."""
    text = (SCENARIOS / name / "request.json").read_text().replace("mg-pt-1", f"pt-{index}")
    body = json.loads(text)
    for value in body["prefetch"].values():
        for entry in (value or {}).get("entry", []):
            entry["resource"]["id"] = f"p{index}-{entry['resource']['id']}"
    return body


@pytest.fixture(scope="module")
def fhir_server(tmp_path_factory):
    import fhirsnake
    root = tmp_path_factory.mktemp("fhirsnake")
    for i, name in enumerate(CASES):
        body = patient_request(i, name)
        resources = [body["prefetch"]["patient"]] + [e["resource"] for v in body["prefetch"].values()
                                                    if v and v.get("resourceType") == "Bundle" for e in v["entry"]]
        for r in resources:
            folder = root / "resources" / r["resourceType"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{r['id']}.json").write_text(json.dumps(r))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(fhirsnake.__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            if requests.get(f"{base}/", timeout=1).ok:
                break
        except requests.RequestException:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("fhirsnake did not start")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def cards(resp) -> list[tuple]:
    assert resp.status_code == 200, resp.get_json()
    return [(c["source"]["topic"]["code"], c["indicator"], c["summary"], c["detail"]) for c in resp.get_json()["cards"]]


@pytest.mark.parametrize("index,name", list(enumerate(CASES)))
def test_fetched_cards_equal_prefetched_cards(fhir_server, index, name):
    app = create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                      "CDS_LOG_LEVEL": "ERROR", "CDS_ALLOWED_FHIR_SERVERS": fhir_server})
    client = app.test_client()
    service = load_json(SCENARIOS / name / "expected.json")["service"]
    with_prefetch = patient_request(index, name)
    without = dict(with_prefetch)
    without.pop("prefetch")
    without["fhirServer"] = fhir_server
    without["fhirAuthorization"] = {"access_token": "t", "token_type": "Bearer", "expires_in": 300,
                                    "scope": "patient/*.read", "subject": "mg-cds"}
    expected = cards(client.post(f"/cds-services/{service}", json=with_prefetch))
    assert cards(client.post(f"/cds-services/{service}", json=without)) == expected
