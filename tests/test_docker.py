"""Dockerfile and docker-compose.yml, tested without a Docker engine: the compose file against the
Compose Specification's JSON schema, its service names, ports and images, the fixture loader's
failure handling, and the image's filesystem steps replayed in a temporary directory with the service
run as the image's unprivileged user (as root every directory is writable and the missing /data
could not show)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from .conftest import CONFORMANCE, ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
URL = re.compile(r"\b(?:https?|postgresql)://(?:[^@/\s]+@)?([A-Za-z0-9._-]+):(\d+)")
UPSTREAM = re.compile(r"^\s*server\s+([A-Za-z0-9._-]+):(\d+)", re.M)


def _container_ports(service: dict) -> set[int]:
    ports = {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}
    return ports | {int(p) for p in service.get("expose", [])}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_compose_file_follows_the_compose_specification():
    schema = json.loads((CONFORMANCE / "compose-spec" / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(COMPOSE)


def test_compose_schema_check_catches_a_wrong_file():
    schema = json.loads((CONFORMANCE / "compose-spec" / "compose-spec.json").read_text())
    wrong = {"services": {"mg-cds": {"image": "mg-cds:0.1.0", "portz": ["8080:8080"]}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(wrong)


def test_images_are_pinned_by_version():
    images = {name: s["image"] for name, s in SERVICES.items() if "image" in s}
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE, re.M)
    assert froms
    for ref in [*images.values(), *froms]:
        tag = ref.rsplit(":", 1)[1] if ":" in ref.split("/")[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{ref} is not pinned by version"


def test_every_url_names_a_compose_service_on_a_port_it_listens_on():
    """Services reach each other by compose hostname; inside a container localhost is itself."""
    checked = 0
    for name, service in SERVICES.items():
        texts = _strings(service.get("environment", {})) + _strings(service.get("command", []))
        texts = [t for t in texts if not t.startswith("http://localhost:")]  # the callers' URL, checked below
        for text in texts:
            for host, port in URL.findall(text):
                assert host in SERVICES, f"{name}: {host}:{port} is not a compose service"
                assert int(port) in _container_ports(SERVICES[host]), f"{name}: {host} does not listen on {port}"
                checked += 1
    for config in COMPOSE.get("configs", {}).values():
        for host, port in UPSTREAM.findall(config.get("content", "")):
            assert host in SERVICES and int(port) in _container_ports(SERVICES[host]), f"upstream {host}:{port}"
            checked += 1
    assert checked >= 5


def test_public_base_urls_are_the_host_ports_the_proxy_publishes():
    published = {int(str(p).split(":")[0]) for s in SERVICES.values() for p in s.get("ports", [])}
    bases = [s["environment"]["CDS_PUBLIC_BASE_URL"] for s in SERVICES.values()
             if isinstance(s.get("environment"), dict) and "CDS_PUBLIC_BASE_URL" in s["environment"]]
    assert bases
    for base in bases:
        assert int(base.rsplit(":", 1)[1]) in published and int(base.rsplit(":", 1)[1]) in \
            {int(str(p).split(":")[0]) for p in SERVICES["proxy"]["ports"]}


def test_host_ports_are_unique_and_serve_listens_on_the_mapped_port():
    host_ports = [str(p).split(":")[0] for s in SERVICES.values() for p in s.get("ports", [])]
    assert len(host_ports) == len(set(host_ports))
    for name, service in SERVICES.items():
        command = service.get("command")
        if isinstance(command, list) and command[:2] == ["mg-cds", "serve"]:
            port = int(command[command.index("--port") + 1])
            assert port in _container_ports(service), name
            assert f"127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"]), name


def test_references_between_services_volumes_and_configs_resolve():
    for name, service in SERVICES.items():
        assert set(service.get("depends_on", [])) <= set(SERVICES), name  # a list or a mapping of names
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in COMPOSE["volumes"], f"{name}: volume {source}"
            else:
                assert (ROOT / source).exists(), f"{name}: {source}"
        for config in service.get("configs", []):
            assert config["source"] in COMPOSE["configs"], name
        # a profile service may depend on default ones, never the other way round
        if "profiles" not in service:
            assert all("profiles" not in SERVICES[d] for d in service.get("depends_on", [])), name


def test_postgres_profile_runs_two_replicas_against_one_database_behind_a_proxy():
    profile = {n for n, s in SERVICES.items() if "postgres" in s.get("profiles", [])}
    replicas = [n for n in profile if SERVICES[n].get("command", [])[:2] == ["mg-cds", "serve"]]
    assert len(replicas) == 2
    urls = {SERVICES[n]["environment"]["CDS_DATABASE_URL"] for n in replicas}
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql://")
    assert URL.search(next(iter(urls))).group(1) in profile
    upstreams = {h for c in COMPOSE["configs"].values() for h, _ in UPSTREAM.findall(c["content"])}
    assert upstreams == set(replicas)


def test_config_contents_escape_dollar_for_compose():
    """Compose interpolates $name in the file; nginx variables must be written $$name."""
    for config in COMPOSE["configs"].values():
        assert not re.search(r"(?<!\$)\$(?!\$)[A-Za-z_{]", config["content"].replace("$$", ""))


# ---------------------------------------------------------------- the fixture loader
FAKE_CURL = """#!/bin/sh
case "$*" in
  *metadata*) exit 0 ;;
esac
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
if [ -n "$FAIL_POSTS" ]; then
  [ -n "$out" ] && echo '{"resourceType":"OperationOutcome","issue":[{"diagnostics":"HAPI-0450 bad bundle"}]}' > "$out"
  exit 22
fi
exit 0
"""


def _run_loader(tmp_path: Path, fail_posts: bool) -> subprocess.CompletedProcess:
    script = SERVICES["hapi-loader"]["command"][0].replace("$$", "$")
    fixtures = tmp_path / "fixtures"
    for sub in ("synthea", "population"):
        (fixtures / sub).mkdir(parents=True)
        (fixtures / sub / "a.json").write_text("{}")
    script = script.replace("/fixtures/", f"{fixtures}/").replace("/tmp/answer.json", str(tmp_path / "answer.json"))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "curl").write_text(FAKE_CURL)
    (bindir / "curl").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "FAIL_POSTS": "1" if fail_posts else ""}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)


def test_fixture_loader_fails_loudly_when_a_bundle_is_refused(tmp_path):
    done = _run_loader(tmp_path, fail_posts=True)
    assert done.returncode != 0
    assert "a.json failed" in done.stderr and "HAPI-0450" in done.stderr


def test_fixture_loader_reports_what_it_loaded(tmp_path):
    done = _run_loader(tmp_path, fail_posts=False)
    assert done.returncode == 0, done.stderr
    assert "loaded 2 bundles" in done.stdout


# ---------------------------------------------------------------- the image's filesystem and user
def _image_layout() -> tuple[int, int, dict[str, str], list[tuple[str, str]], str]:
    """(uid, gid, {user or group name: id}, [(chown owner, dir)], CDS_FEEDBACK_DB) read from the Dockerfile."""
    run = " ".join(re.findall(r"^RUN\s+(.*?)(?<!\\)$", DOCKERFILE.replace("\\\n", " "), re.M | re.S))
    names: dict[str, str] = {}
    for cmd in re.split(r"&&|;", run):
        words = shlex.split(cmd)
        if words[:1] in (["useradd"], ["groupadd"]) and ("--uid" in words or "--gid" in words):
            flag = "--uid" if words[0] == "useradd" else "--gid"
            names[("user:" if words[0] == "useradd" else "group:") + words[-1]] = words[words.index(flag) + 1]
    chowns = [(w[1], w[2]) for w in (shlex.split(c) for c in re.split(r"&&|;", run)) if w[:1] == ["chown"]]
    uid, gid = re.search(r"^USER\s+(\d+):(\d+)", DOCKERFILE, re.M).groups()
    db = re.search(r"CDS_FEEDBACK_DB=(\S+)", DOCKERFILE).group(1)
    return int(uid), int(gid), names, chowns, db


def _replay_filesystem(rootfs: Path, names: dict[str, str], chowns: list[tuple[str, str]], with_chown: bool) -> None:
    for directory in re.findall(r"mkdir\s+-p\s+(\S+)", DOCKERFILE):
        (rootfs / directory.lstrip("/")).mkdir(parents=True, exist_ok=True)  # as root: root-owned, 0755
    for owner, directory in chowns if with_chown else []:
        user, _, group = owner.partition(":")
        os.chown(rootfs / directory.lstrip("/"), int(names.get(f"user:{user}", user)),
                 int(names.get(f"group:{group}", group)))
    for mode, directory in re.findall(r"chmod\s+(\d+)\s+(\S+)", DOCKERFILE):
        (rootfs / directory.lstrip("/")).chmod(int(mode, 8))


def _as_user(uid: int, gid: int) -> list[str]:
    # Reading the code must not depend on where the checkout lives (CI may clone under a 0700 home),
    # so the process keeps CAP_DAC_READ_SEARCH (read and search any file); writing still needs the
    # file permissions of an unprivileged user, which is what the image gets wrong or right.
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


@pytest.fixture
def unprivileged():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run this as root with setpriv (util-linux) to test the image's user")
        pytest.skip("needs root and setpriv to run the service as the image's unprivileged user")
    uid, gid, names, chowns, db = _image_layout()
    assert uid != 0 and names.get("user:mgcds") == str(uid) and names.get("group:mgcds") == str(gid)
    rootfs = Path(tempfile.mkdtemp(prefix="mgcds-rootfs-"))
    rootfs.chmod(0o755)
    yield uid, gid, names, chowns, db, rootfs
    shutil.rmtree(rootfs, ignore_errors=True)


def _env(rootfs: Path, db: str) -> dict[str, str]:
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": "/nonexistent",
            "CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": str(rootfs / db.lstrip("/")), "CDS_LOG_LEVEL": "WARNING",
            "PYTHONDONTWRITEBYTECODE": "1"}


CONTROL = """
import json, sys
from cds_service import create_app
try:
    client = create_app().test_client()
except Exception as exc:  # the store could not be opened at start
    print(json.dumps({"start": type(exc).__name__}))
    sys.exit(0)
body = json.load(open(sys.argv[1]))
print(json.dumps({"feedback": client.post("/cds-services/mg-order-sign/feedback", json=body).status_code,
                  "readyz": client.get("/readyz").status_code}))
"""


def test_without_the_data_directory_step_the_service_cannot_store_anything(unprivileged):
    """The control: the image as it was (no /data owned by its user) cannot keep feedback, as the
    issue says: the service either fails to start or answers feedback and /readyz with an error."""
    uid, gid, names, chowns, db, rootfs = unprivileged
    _replay_filesystem(rootfs, names, chowns, with_chown=False)
    done = subprocess.run([*_as_user(uid, gid), sys.executable, "-c", CONTROL,
                           str(CONFORMANCE / "spec-2.0.1" / "feedback-accepted.json")],
                          cwd=ROOT, env=_env(rootfs, db), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "start" in outcome or (outcome["feedback"] >= 500 and outcome["readyz"] == 503), outcome
    assert not (rootfs / db.lstrip("/")).exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_service_runs_as_the_image_user_and_stores_feedback_in_data(unprivileged):
    uid, gid, names, chowns, db, rootfs = unprivileged
    _replay_filesystem(rootfs, names, chowns, with_chown=True)
    port = _free_port()
    proc = subprocess.Popen([*_as_user(uid, gid), str(Path(sys.executable).parent / "mg-cds"), "serve",
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--threads", "2"],
                            cwd=ROOT, env=_env(rootfs, db), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"mg-cds serve exited {proc.returncode}: {proc.stdout.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mg-cds serve did not answer /healthz within 60 s")
        body = json.loads((CONFORMANCE / "spec-2.0.1" / "feedback-accepted.json").read_text())
        req = urllib.request.Request(f"{base}/cds-services/mg-order-sign/feedback", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        assert urllib.request.urlopen(req, timeout=10).status == 200
        assert urllib.request.urlopen(f"{base}/readyz", timeout=5).status == 200
        stored = rootfs / db.lstrip("/")
        assert stored.exists() and stored.stat().st_uid == uid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
