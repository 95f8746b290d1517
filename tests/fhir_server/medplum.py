"""Start the Medplum-backed test FHIR server (server.mjs) and load patients into it.

``npm ci`` runs here when node_modules is missing or differs from the lockfile, so a fresh clone
needs only Node (20, run with ``--experimental-websocket``, or 22+) and npm on PATH, and the npm
registry. The server takes a free port and says so on stdout; :func:`shared_server` starts one
per test session and :func:`stop_shared_server` ends it. Loading fails loudly: any entry the server
does not store raises :class:`LoadError`."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pytest
import requests

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 60.0
INSTALL_TIMEOUT = 600.0
BATCH_SIZE = 1000
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


class ServerUnavailable(RuntimeError):
    """The server could not be installed or started (the reason is the message)."""


class LoadError(RuntimeError):
    """The server refused to store some of the resources it was given."""


def node_command() -> list[str]:
    """``node`` with the flags this Node needs: Node 20 has WebSocket (used by @medplum/core)
    only behind --experimental-websocket; 22+ has it built in; older Node cannot run Medplum 5."""
    node = shutil.which("node")
    if not node:
        raise ServerUnavailable("node is not on PATH (Node 20 or later is needed for the Medplum test server)")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        raise ServerUnavailable(f"cannot read the Node version from {version!r}") from None
    if major < 20:
        raise ServerUnavailable(f"Node {version} is too old for @medplum/fhir-router 5 (Node 20+ is needed)")
    return [node, "--experimental-websocket"] if major < 22 else [node]


def _installed_matches_lock() -> bool:
    """node_modules holds every package at the version package-lock.json pins."""
    locked = json.loads((HERE / "package-lock.json").read_text())["packages"]
    for path, entry in locked.items():
        if not path:
            continue
        installed = HERE / path / "package.json"
        if not installed.exists() or json.loads(installed.read_text()).get("version") != entry.get("version"):
            return False
    return True


def ensure_installed() -> None:
    """``npm ci`` from the committed lockfile when node_modules is missing or differs from it."""
    if _installed_matches_lock():
        return
    npm = shutil.which("npm")
    if not npm:
        raise ServerUnavailable("npm is not on PATH (needed once to install tests/fhir_server)")
    try:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ServerUnavailable(f"npm ci in {HERE} took longer than {INSTALL_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        raise ServerUnavailable(f"npm ci in {HERE} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


@dataclass
class MedplumServer:
    """One running server.mjs process; ``base`` is its FHIR base URL, ``token`` the bearer token
    it requires of every request but GET /metadata."""
    process: subprocess.Popen
    base: str
    token: str
    log_dir: Path
    start_seconds: float
    load_seconds: float = 0.0
    loaded: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls) -> "MedplumServer":
        ensure_installed()
        log_dir = Path(tempfile.mkdtemp(prefix="medplum-"))
        token = secrets.token_urlsafe(16)
        began = time.monotonic()
        with open(log_dir / "stdout", "wb") as out, open(log_dir / "stderr", "wb") as err:
            process = subprocess.Popen([*node_command(), str(HERE / "server.mjs"), "--port", "0",
                                        "--token", token], cwd=HERE,
                                       stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        port = _wait_for_port(process, log_dir, began + START_TIMEOUT)
        server = cls(process=process, base=f"http://127.0.0.1:{port}", token=token, log_dir=log_dir,
                     start_seconds=0.0)
        server._wait_ready(began + START_TIMEOUT)
        server.start_seconds = time.monotonic() - began
        return server

    def _wait_ready(self, deadline: float) -> None:
        while True:
            try:
                if requests.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise ServerUnavailable(f"the Medplum test server did not answer /metadata: {self.stderr()}")
            time.sleep(0.1)

    def get(self, relative_or_url: str) -> dict[str, Any]:
        """GET a path under the base (or a full URL, such as a link.next) with the token."""
        url = relative_or_url if relative_or_url.startswith("http") else f"{self.base}/{relative_or_url}"
        resp = requests.get(url, headers={"Authorization": f"Bearer {self.token}", **FHIR_JSON}, timeout=30)
        assert resp.status_code == 200, (url, resp.status_code, resp.text[:500])
        return resp.json()

    def stderr(self) -> str:
        path = self.log_dir / "stderr"
        return path.read_text(errors="replace").strip()[-2000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.log_dir, ignore_errors=True)

    def put_all(self, resources: Iterable[dict[str, Any]]) -> int:
        """PUT each resource at Type/id (in batches); every one must be stored."""
        entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                   for r in resources]
        for i in range(0, len(entries), BATCH_SIZE):
            self.batch(entries[i:i + BATCH_SIZE])
        return len(entries)

    def load_bundle(self, bundle: dict[str, Any]) -> int:
        """Load a transaction Bundle (fixtures/population) entry by entry, as a batch."""
        entries = bundle.get("entry") or []
        for i in range(0, len(entries), BATCH_SIZE):
            self.batch(entries[i:i + BATCH_SIZE])
        return len(entries)

    def batch(self, entries: list[dict[str, Any]]) -> None:
        began = time.monotonic()
        body = {"resourceType": "Bundle", "type": "batch", "entry": entries}
        resp = requests.post(f"{self.base}/", data=json.dumps(body), timeout=300,
                             headers={"Authorization": f"Bearer {self.token}", **FHIR_JSON})
        answer = resp.json() if resp.headers.get("Content-Type", "").startswith("application/fhir+json") else {}
        if resp.status_code != 200 or answer.get("type") != "batch-response":
            raise LoadError(f"the server refused a batch of {len(entries)} ({resp.status_code}): {resp.text[:1000]}")
        refused = [(entry.get("request", {}).get("url"), result.get("response", {}))
                   for entry, result in zip(entries, answer.get("entry") or [])
                   if not str(result.get("response", {}).get("status", "")).startswith(("200", "201"))]
        if refused or len(answer.get("entry") or []) != len(entries):
            detail = "; ".join(f"{url}: {_outcome_text(response)}" for url, response in refused[:10])
            raise LoadError(f"{len(refused)} of {len(entries)} resources were not stored: {detail}")
        self.load_seconds += time.monotonic() - began
        for entry in entries:
            rtype = entry.get("request", {}).get("url", "").split("/")[0]
            self.loaded[rtype] = self.loaded.get(rtype, 0) + 1


def _outcome_text(response: dict[str, Any]) -> str:
    issues = (response.get("outcome") or {}).get("issue") or []
    text = "; ".join(str((i.get("details") or {}).get("text") or i.get("diagnostics") or i.get("code"))
                     for i in issues)
    return f"{response.get('status')} {text}".strip()


def _wait_for_port(process: subprocess.Popen, log_dir: Path, deadline: float) -> int:
    """The port from the server's first stdout line ``{"listening": PORT}``."""
    out = log_dir / "stdout"
    while time.monotonic() < deadline:
        line = out.read_text().split("\n", 1)[0] if out.exists() else ""
        if line.endswith("}"):
            return int(json.loads(line)["listening"])
        if process.poll() is not None:
            err = (log_dir / "stderr").read_text(errors="replace").strip()[-2000:]
            raise ServerUnavailable(f"the Medplum test server exited ({process.returncode}): {err}")
        time.sleep(0.05)
    process.kill()
    raise ServerUnavailable(f"the Medplum test server did not listen within {START_TIMEOUT:.0f} s")


_SHARED: dict[str, MedplumServer | ServerUnavailable] = {}


def shared_server() -> MedplumServer:
    """The session's one server, started on first use. When it cannot start, the test fails
    under CI=true and is skipped with the reason elsewhere (the same reason for every test)."""
    if "server" not in _SHARED:
        try:
            _SHARED["server"] = MedplumServer.start()
        except ServerUnavailable as exc:
            _SHARED["server"] = exc
    server = _SHARED["server"]
    if isinstance(server, ServerUnavailable):
        reason = f"Medplum test FHIR server unavailable: {server}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return server


def stop_shared_server() -> None:
    server = _SHARED.pop("server", None)
    if isinstance(server, MedplumServer):
        server.stop()


@pytest.fixture(scope="session")
def medplum() -> Iterable[MedplumServer]:
    """The running Medplum test server (session scope; import this fixture into a test module)."""
    yield shared_server()
    stop_shared_server()
