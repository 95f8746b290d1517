"""Packaging: the CLI, the README's two commands and CI calling the README's test
command (Docker and compose: tests/test_docker.py)."""
from __future__ import annotations

import json
import platform

from cds_service.cli import main as cli

from .conftest import ROOT, SCENARIOS


def test_readme_commands_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_cli_evaluate_prints_a_valid_response(capsys):
    assert cli(["evaluate", str(SCENARIOS / "ivig-no-iga" / "request.json")]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [c["source"]["topic"]["code"] for c in body["cards"]] == ["ivig-iga-unknown"]


def test_cli_explain_services_rules(capsys):
    assert cli(["explain", str(SCENARIOS / "pv-crisis-grade4" / "request.json")]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["grade"] == 4 and "crisis" in explained["grade_explanation"]
    assert cli(["services"]) == 0
    assert len(json.loads(capsys.readouterr().out)["services"]) == 3
    assert cli(["rules"]) == 0
    assert capsys.readouterr().out.count("\n") == 2 + 22


def test_cli_demo(capsys):
    assert cli(["demo", "--scenarios", str(SCENARIOS)]) == 0
    assert "[CRITICAL]" in capsys.readouterr().out


def test_mg_cds_serve_runs_gunicorn_and_answers():
    import os
    import socket
    import subprocess
    import sys
    import time

    import requests
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CDS_AUTH_MODE": "off", "CDS_PREVIEW": "true", "CDS_FEEDBACK_DB": ":memory:"}
    proc = subprocess.Popen([sys.executable, "-m", "cds_service.cli", "serve", "--port", str(port), "--workers", "1"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise AssertionError(proc.stderr.read1().decode() if proc.poll() is not None else "no answer")
        assert health["status"] == "ok"
        body = (SCENARIOS / "macrolide-grade3" / "request.json").read_bytes()
        resp = requests.post(f"http://127.0.0.1:{port}/cds-services/mg-order-select", data=body,
                             headers={"Content-Type": "application/json"}, timeout=10)
        assert resp.status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/preview", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    stderr = proc.stderr.read()
    assert b"Starting gunicorn" in stderr
    # the worker froze its heap after loading the app: about 20,000 objects are alive before
    # the app is loaded (where post_fork would freeze), over 50,000 after
    ready = [json.loads(line) for line in stderr.splitlines() if b'"worker_ready"' in line]
    assert ready and ready[0]["gc_gen0"] == 50000 and ready[0]["gc_frozen_objects"] > 40_000, ready
    if platform.libc_ver()[0] == "glibc":
        assert ready[0]["malloc_top_pad"] is True, ready
