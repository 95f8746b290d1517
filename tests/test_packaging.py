"""Packaging: the CLI, the README's two commands and CI calling the README's test
command (Docker and compose: tests/test_docker.py)."""
from __future__ import annotations

import json
import platform

import pytest

from cds_service.cli import main as cli
from cds_service.config import load_config

from .conftest import ROOT, SCENARIOS


def test_readme_commands_and_ci():
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme and "make lint" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    steps = [line.strip() for line in ci.splitlines() if line.strip().startswith(("make ", "export "))]
    assert steps == ["export CI=true", "make ci-deps", "make test", "make lint"]


def test_cli_evaluate_prints_a_valid_response(capsys):
    assert cli(["evaluate", str(SCENARIOS / "ivig-no-iga" / "request.json")]) == 0
    body = json.loads(capsys.readouterr().out)
    assert "ivig-iga-unknown" in [c["source"]["topic"]["code"] for c in body["cards"]]  # exact cards: test_scenarios


def test_cli_explain_services_rules(capsys):
    assert cli(["explain", str(SCENARIOS / "pv-crisis-grade4" / "request.json")]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["grade"] == 4 and "crisis" in explained["grade_explanation"]
    assert cli(["services"]) == 0
    assert len(json.loads(capsys.readouterr().out)["services"]) == 3
    from hooks.rules import catalogue
    assert cli(["rules"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 2 + len(catalogue())  # header, rule line, one line per rule
    assert all(row["id"] in out for row in catalogue())


def test_cli_demo(capsys):
    import shutil
    from pathlib import Path
    assert cli(["demo", "--scenarios", str(SCENARIOS)]) == 0
    out = capsys.readouterr().out
    assert "[CRITICAL]" in out
    command = out.split("Try: ", 1)[1].split()[0]  # a command that runs from here, on PATH or not
    assert shutil.which(command) or (Path.cwd() / command).is_file(), command


def test_every_configuration_key_is_documented_and_settable_by_create_app():
    from cds_service import create_app
    from cds_service.config import DEFAULTS
    from hooks import validation
    readme = (ROOT / "README.md").read_text()
    assert [k for k in DEFAULTS if f"`{k}`" not in readme] == []
    before = validation.VERDICTS_MAX
    try:
        create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_VALIDATION_CACHE": 0})
        assert validation.VERDICTS_MAX == 0
    finally:
        validation.VERDICTS_MAX = before


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


def test_wheel_ships_the_data_folders_without_setuptools_warnings(tmp_path):
    """static/, knowledge/ and knowledge/valuesets/ are packages of their own (find_namespace:), so
    setuptools neither warns 'package would be ignored' nor leaves their files out."""
    import subprocess
    import sys
    import zipfile
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    log = done.stdout + done.stderr
    assert "is absent from the `packages` configuration" not in log and "would be ignored" not in log
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    for folder, pattern in (("cds_service/static", "*.*"), ("hooks/knowledge", "*.json"),
                            ("hooks/knowledge/valuesets", "*.json")):
        expected = {f"{folder}/{p.name}" for p in (ROOT / folder).glob(pattern)}
        assert expected and expected <= set(names), folder
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests/", "fixtures/"))]


def test_make_reliability_fails_when_a_check_fails(monkeypatch, capsys):
    """`make reliability` exits non-zero when fuzzing fails (it used to report success)."""
    import subprocess

    from reliability import run

    failed = subprocess.CompletedProcess([], 1, stdout="FAILED tests/test_fuzz.py::x\n9 failed, 23 passed in 3.0s\n", stderr="")
    monkeypatch.setattr(run.subprocess, "run", lambda *a, **k: failed)
    assert run.fuzz() == ["fuzzing: pytest exited 1 (9 failed, 23 passed in 3.0s)"]
    for name in ("load_test", "soak", "durability"):
        monkeypatch.setattr(run, name, lambda: [])
    assert run.main() == 1
    assert "FAILED: fuzzing" in capsys.readouterr().err
    monkeypatch.setattr(run, "fuzz", lambda: [])
    assert run.main() == 0


def test_bench_writes_its_plot_outside_the_tree_unless_asked():
    from benchmarks.run import plot_path
    assert ROOT not in plot_path([]).resolve().parents
    assert plot_path(["--plot", "benchmarks/latency.png"]).as_posix() == "benchmarks/latency.png"


def test_contributing_walk_through_matches_the_code():
    """The 'Adding a rule' example is the real rule, its texts and its scenario, character for character."""
    import re
    guide = (ROOT / "CONTRIBUTING.md").read_text()
    python, rules_json = re.findall(r"```python\n(.*?)```", guide, re.S)[0], re.findall(r"```json\n(.*?)```", guide, re.S)[0]
    assert python in (ROOT / "hooks" / "rules" / "rituximab.py").read_text()
    entry = json.loads("{" + rules_json + "}")["rituximab-hcv-positive"]
    assert json.loads((ROOT / "hooks" / "knowledge" / "rules.json").read_text())["rules"]["rituximab-hcv-positive"] == entry
    scenario_call = " ".join(re.findall(r"```python\n(.*?)```", guide, re.S)[1].split())
    assert scenario_call in " ".join((ROOT / "fixtures" / "build_scenarios.py").read_text().split())
    for path in re.findall(r"`((?:hooks|tests|fixtures)/[\w./-]+\.(?:py|json))`", guide):
        assert (ROOT / path).exists() or "<" in path, path


def test_readme_catalogue_is_each_rules_own_when_then():
    """The README's rule table quotes each registered rule's docstring, so it cannot drift from the code."""
    from hooks.rules.registry import REGISTRY
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for spec in REGISTRY.values():
        assert f"| `{spec.id}` |" in readme and f"| {spec.doc} |" in readme, spec.id


def test_the_preview_page_cannot_be_served_with_jwt_auth_on():
    """It calls the services without a JWT: with auth on it would fail, or tempt someone to turn auth off."""
    with pytest.raises(ValueError, match="CDS_PREVIEW needs CDS_AUTH_MODE=off"):
        load_config({"CDS_PREVIEW": True, "CDS_AUTH_MODE": "jwt"}, environ={})
    assert load_config({"CDS_PREVIEW": True, "CDS_AUTH_MODE": "off"}, environ={})["CDS_PREVIEW"] is True


@pytest.mark.parametrize("env,message", [
    ({"CDS_CLIENT_PROFILE": "cerner"}, "CDS_CLIENT_PROFILE must be one of"),
    ({"CDS_FHIR_MAX_PAGES": "ten"}, "CDS_FHIR_MAX_PAGES must be a number"),
    ({"CDS_ALLOWED_FHIR_SERVERS": "ftp://ehr.example.org/fhir"}, "CDS_ALLOWED_FHIR_SERVERS entry"),
])
def test_a_setting_the_service_cannot_start_with_is_one_line_and_exit_2(monkeypatch, capsys, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli(["evaluate", str(SCENARIOS / "ivig-no-iga" / "request.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mg-cds: configuration error: ") and message in err and "Traceback" not in err
