"""The storage layer on a real PostgreSQL, and two app instances (two replicas)
sharing it: a token used on one is refused on the other, feedback posted to one
for a card the other issued is counted under that card's rule and stored once,
and an outage of the database answers cards and refuses what needs it with 503.

The server is Debian's `postgresql` package: a cluster made with initdb in a
temporary folder and run as the `postgres` user when the tests run as root
(initdb refuses root). Under CI=true a server that cannot start fails the tests;
elsewhere they skip saying why."""
from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from cds_service import create_app, storage

from .conftest import CONFORMANCE, NOW, SCENARIOS, load_json

BASE = "https://cds.example.org"
SERVICE = "/cds-services/mg-order-select"
EHR = "https://fhir-ehr.example.com/"


def pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway cluster: initdb, start, stop, start again (same data), remove."""

    def __init__(self) -> None:
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
        self.root = Path(tempfile.mkdtemp(prefix="mgcds-pg-"))
        self.data, self.port, self.proc = self.root / "data", _free_port(), None
        self.user = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam("postgres") if _has_user("postgres") else pwd.getpwnam("nobody")
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "mgcds", "--auth=trust",
                   "-E", "UTF8", "--no-sync"])

    def _as_user(self, cmd: list[str]) -> list[str]:
        if self.user is None:
            return cmd
        # setpriv execs (no parent left between us and postgres), so signals reach the server.
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--init-groups", *cmd]

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(self._as_user(cmd), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip()[-500:]}")

    def start(self) -> None:
        self.proc = subprocess.Popen(self._as_user([
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100", "-c", "fsync=on"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.proc.stderr.read().decode()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                if self._query("SELECT 1"):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections within 30 s")

    def _query(self, sql: str) -> bool:
        import psycopg
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2, autocommit=True) as conn:
                conn.execute(sql)
            return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str) -> str:
        return f"postgresql://mgcds@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        assert self._query(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: open connections are cut
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def start_server() -> PostgresServer:
    try:
        server = PostgresServer()
        server.start()
        return server
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL could not be started under CI: {exc}")
        pytest.skip(f"PostgreSQL could not be started here: {exc}")


@pytest.fixture(scope="module")
def server():
    srv = start_server()
    yield srv
    srv.remove()


@pytest.fixture
def url(server) -> str:
    return server.new_database()


def _config(url: str, **extra) -> dict:
    return {"CDS_AUTH_MODE": "off", "CDS_DATABASE_URL": url, "CDS_NOW": NOW, "CDS_LOG_LEVEL": "ERROR", **extra}


def _jwt_config(url: str) -> dict:
    return _config(url, CDS_AUTH_MODE="jwt", CDS_PUBLIC_BASE_URL=BASE,
                   CDS_TRUSTED_ISSUERS={EHR: {"jwks": load_json(CONFORMANCE / "spec-2.0.1" / "jwks-public.json")}})


def _token(jti: str, aud: str = BASE + SERVICE) -> str:
    from joserfc import jwt
    from joserfc.jwk import ECKey
    key = ECKey.import_key(load_json(CONFORMANCE / "spec-2.0.1" / "jwk-private-PUBLIC-SPEC-EXAMPLE-DO-NOT-USE.json"))
    now = int(time.time())
    return jwt.encode({"alg": "ES384", "typ": "JWT", "kid": "example-kid"},
                      {"iss": EHR, "aud": aud, "exp": now + 300, "iat": now, "jti": jti}, key, algorithms=["ES384"])


def _call(client, tok: str | None = None, path: str = SERVICE, body: dict | None = None):
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    body = body or load_json(SCENARIOS / "macrolide-grade3" / "request.json")
    return client.post(path, json=body, headers=headers, base_url=BASE)


def replay_across_instances(url: str, tmp: Path) -> tuple[int, int, int]:
    """One JWT sent to gunicorn instance A, then B, then A (JWT mode, one database): the statuses."""
    from benchmarks.run import start_gunicorn
    spec = CONFORMANCE / "spec-2.0.1"
    issuers = tmp / "issuers.json"
    issuers.write_text(json.dumps({EHR: {"jwks": load_json(spec / "jwks-public.json")}}))
    env = {"CDS_DATABASE_URL": url, "CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": str(issuers),
           "CDS_PUBLIC_BASE_URL": BASE, "CDS_LOG_LEVEL": "WARNING"}
    servers = [start_gunicorn("cds_service:create_app()", env_extra=env) for _ in range(2)]
    try:
        token = _token(str(uuid.uuid4()))
        body = load_json(SCENARIOS / "macrolide-grade3" / "request.json")
        statuses = [requests.post(f"http://127.0.0.1:{port}{SERVICE}", json=body, timeout=10,
                                  headers={"Authorization": f"Bearer {token}"}).status_code
                    for _, port in (servers[0], servers[1], servers[0])]
        return statuses[0], statuses[1], statuses[2]
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            proc.wait(timeout=15)


def test_a_token_used_on_one_gunicorn_instance_is_refused_by_the_other(url, tmp_path):
    assert replay_across_instances(url, tmp_path) == (200, 401, 401)


def _ready_within(client, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_the_schema_is_made_once_when_replicas_start_together(url):
    engines = [storage.new_engine(url) for _ in range(4)]
    results, errors = [], []

    def run(engine):
        try:
            results.append(storage.upgrade(engine))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    made, found = (0, storage.SCHEMA_VERSION), (storage.SCHEMA_VERSION, storage.SCHEMA_VERSION)
    assert sorted(results) == [made, found, found, found]  # one replica made it, the others found it
    for e in engines:
        e.dispose()


def test_a_token_used_on_one_replica_is_refused_on_the_other(url):
    a, b = create_app(_jwt_config(url)).test_client(), create_app(_jwt_config(url)).test_client()
    tok = _token("across-replicas")
    assert _call(a, tok).status_code == 200
    replay = _call(b, tok)
    assert replay.status_code == 401
    assert "replay" in replay.get_json()["issue"][0]["details"]["text"]
    assert _call(b, _token("fresh")).status_code == 200


def test_feedback_to_one_replica_for_a_card_from_the_other_is_attributed_and_stored_once(url):
    issuer, receiver = create_app(_config(url)), create_app(_config(url))
    card = _call(issuer.test_client()).get_json()["cards"][0]
    issuer.extensions["mg_cds"]["feedback"].flush()
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-25T12:01:00Z",
            "overrideReason": {"reason": card["overrideReasons"][0]}}
    for app in (receiver, issuer, receiver):  # sent to both replicas, and resent
        assert _call(app.test_client(), None, SERVICE + "/feedback", {"feedback": [item]}).status_code == 200
    store = receiver.extensions["mg_cds"]["feedback"]
    assert len(store.all()) == 1
    row = {r["rule_id"]: r for r in store.report()}["mg-exacerbating-drug"]
    assert (row["issued"], row["overridden"], row["override_rate"]) == (1, 1, 1.0)
    assert row["top_override_reasons"].endswith("(1)")


def test_jti_rows_expire_and_are_purged_on_postgres(url):
    from cds_service.feedback import FeedbackStore
    store = FeedbackStore(url)
    t0 = 1_800_000_000.0
    assert store.first_jti_use(EHR, "a", t0 + 930, t0)
    assert not store.first_jti_use(EHR, "a", t0 + 930, t0 + 900)
    assert store.first_jti_use(EHR, "a", t0 + 5000, t0 + 931)
    assert not store.first_jti_use(EHR, "a", t0 + 5000, t0 + 932)
    store.close()


def test_an_outage_answers_cards_refuses_jwt_and_feedback_with_503_then_recovers():
    srv = start_server()
    try:
        url = srv.new_database()
        app = create_app(_jwt_config(url))
        client = app.test_client()
        store = app.extensions["mg_cds"]["feedback"]
        assert client.get("/readyz").status_code == 200
        assert _call(client, _token("before")).status_code == 200
        srv.stop()
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        refused = _call(client, _token("during"))
        assert refused.status_code == 503 and refused.get_json()["resourceType"] == "OperationOutcome"
        off = create_app(_config(url)).test_client()  # a replica without JWT keeps answering cards
        started = time.monotonic()
        answered = _call(off)
        assert answered.status_code == 200 and answered.get_json()["cards"]
        assert time.monotonic() - started < 1.0  # the answer does not wait for the database
        fb = {"feedback": [{"card": answered.get_json()["cards"][0]["uuid"], "outcome": "accepted",
                            "outcomeTimestamp": NOW}]}
        assert _call(off, None, SERVICE + "/feedback", fb).status_code == 503
        srv.start()
        assert _ready_within(client, 5.0) and _ready_within(off, 5.0)  # fail fast for FAIL_FAST_SECONDS
        assert _call(client, _token("after")).status_code == 200
        assert _call(off, None, SERVICE + "/feedback", fb).status_code == 200
        assert store.rules_for([answered.get_json()["cards"][0]["uuid"]]) == {
            answered.get_json()["cards"][0]["uuid"]: "mg-exacerbating-drug"}  # the queued row was written
    finally:
        srv.remove()


def test_an_app_started_while_postgres_is_down_answers_cards_and_becomes_ready_when_it_is_up():
    srv = start_server()
    try:
        url = srv.new_database()
        srv.stop()
        app = create_app(_config(url))
        client = app.test_client()
        assert client.get("/readyz").status_code == 503
        resp = _call(client)
        assert resp.status_code == 200 and resp.get_json()["cards"]
        srv.start()
        assert _ready_within(client, 5.0)  # the schema is made then
        assert app.extensions["mg_cds"]["feedback"].flush_quietly()
        assert app.extensions["mg_cds"]["feedback"].rules_for([resp.get_json()["cards"][0]["uuid"]])
    finally:
        srv.remove()
