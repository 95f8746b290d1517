"""The CDS Hooks 2.0 JWT matrix, signed with the spec's published example
key (ES384) and a generated RSA key (RS384)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import pytest
import responses
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from cds_service import create_app

from .conftest import CONFORMANCE, SCENARIOS, load_json

SPEC = CONFORMANCE / "spec-2.0.1"
EHR = "https://fhir-ehr.example.com/"
RSA_EHR = "https://rsa-ehr.example.org"
JKU_EHR = "https://jku-ehr.example.org"
JKU = "https://jku-ehr.example.org/.well-known/jwks.json"
BASE = "https://cds.example.org"
SERVICE = "/cds-services/mg-order-select"
FEEDBACK = "/cds-services/mg-order-select/feedback"
EC_PRIVATE = ECKey.import_key(load_json(SPEC / "jwk-private-PUBLIC-SPEC-EXAMPLE-DO-NOT-USE.json"))
RSA_PRIVATE = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
JKU_PRIVATE = RSAKey.generate_key(2048, parameters={"kid": "jku-1"})


@pytest.fixture
def client(tmp_path):
    issuers = {EHR: {"jwks": load_json(SPEC / "jwks-public.json")},
               RSA_EHR: {"jwks": {"keys": [RSA_PRIVATE.as_dict(private=False)]}},
               JKU_EHR: {"jwks": {"keys": []}, "jku": [JKU]}}
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(issuers))
    app = create_app({"CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": str(path), "CDS_PUBLIC_BASE_URL": BASE,
                      "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z"})
    return app.test_client()


def token(*, alg="ES384", key=EC_PRIVATE, kid="example-kid", iss=EHR, aud=BASE + SERVICE, exp_in=300,
          iat_offset=0, jti=None, jku=None, drop=()) -> str:
    now = int(time.time())
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    if jku:
        header["jku"] = jku
    claims = {"iss": iss, "aud": aud, "exp": now + exp_in, "iat": now + iat_offset, "jti": jti or str(uuid.uuid4()),
              "tenant": "t1"}
    for name in drop:
        claims.pop(name)
    return jwt.encode(header, claims, key, algorithms=[alg])


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def call(client, tok: str | None, path: str = SERVICE, body: dict | None = None):
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    body = body or load_json(SCENARIOS / "ivig-no-iga" / "request.json")
    return client.post(path, json=body, headers=headers, base_url=BASE)


def test_valid_es384_with_the_spec_example_key(client):
    assert call(client, token()).status_code == 200


def test_valid_rs384(client):
    assert call(client, token(alg="RS384", key=RSA_PRIVATE, kid="rsa-1", iss=RSA_EHR)).status_code == 200


def test_valid_token_on_the_feedback_url(client):
    fb = load_json(SPEC / "feedback-accepted.json")
    assert call(client, token(aud=BASE + FEEDBACK), FEEDBACK, fb).status_code == 200


def forged(alg: str, secret: bytes | None) -> str:
    now = int(time.time())
    head = b64({"alg": alg, "typ": "JWT", "kid": "example-kid"})
    body = b64({"iss": EHR, "aud": BASE + SERVICE, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())})
    signing = f"{head}.{body}".encode()
    sig = b"" if secret is None else hmac.new(secret, signing, hashlib.sha256).digest()
    return f"{head}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


REJECTED = {
    "alg none": lambda: forged("none", None),
    "HS256 with the public key as secret": lambda: forged("HS256", json.dumps(load_json(SPEC / "jwks-public.json")).encode()),
    "ES256 (not allowed)": lambda: forged("ES256", None),
    "wrong aud": lambda: token(aud="https://other.example.org" + SERVICE),
    "aud of the feedback URL on the service": lambda: token(aud=BASE + FEEDBACK),
    "aud as a list with another audience": lambda: token(aud=[BASE + SERVICE, "https://evil.example"]),
    "expired": lambda: token(exp_in=-3600),
    "iat in the future": lambda: token(iat_offset=3600, exp_in=7200),
    "no jti": lambda: token(drop=("jti",)),
    "no exp": lambda: token(drop=("exp",)),
    "unknown kid": lambda: token(kid="not-a-known-kid"),
    "untrusted iss": lambda: token(iss="https://evil.example.org"),
    "jku not allowlisted, kid not in the inline key set": lambda: token(kid="other-kid",
                                                                        jku="https://evil.example.org/jwks.json"),
    "signed by another key": lambda: token(key=ECKey.generate_key("P-384"), kid="example-kid"),
    "RS384 key claiming the ES issuer": lambda: token(alg="RS384", key=RSA_PRIVATE, kid="rsa-1", iss=EHR),
    "not a JWT": lambda: "abc.def",
}


@pytest.mark.parametrize("case", list(REJECTED))
def test_rejected_tokens_get_401_with_www_authenticate(client, case):
    resp = call(client, REJECTED[case]())
    assert resp.status_code == 401, case
    assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="mg-cds"')
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_missing_bearer_is_401(client):
    assert call(client, None).status_code == 401


def test_service_token_on_the_feedback_url_is_401(client):
    fb = load_json(SPEC / "feedback-accepted.json")
    assert call(client, token(aud=BASE + SERVICE), FEEDBACK, fb).status_code == 401


def test_replayed_jti_is_401(client):
    tok = token(jti="once-only")
    assert call(client, tok).status_code == 200
    assert call(client, tok).status_code == 401


@responses.activate
def test_allowlisted_jku_is_fetched_and_cached(client):
    responses.get(JKU, json={"keys": [JKU_PRIVATE.as_dict(private=False)]})
    for _ in range(2):
        assert call(client, token(alg="RS384", key=JKU_PRIVATE, kid="jku-1", iss=JKU_EHR, jku=JKU)).status_code == 200
    assert len(responses.calls) == 1


@responses.activate
def test_oversized_jwks_is_refused(client):
    responses.get(JKU, body="x" * 200_000)
    assert call(client, token(alg="RS384", key=JKU_PRIVATE, kid="jku-1", iss=JKU_EHR, jku=JKU)).status_code == 401


def test_discovery_needs_no_token(client):
    assert client.get("/cds-services", base_url=BASE).status_code == 200


def test_tokens_never_reach_logs_or_error_bodies(tmp_path, capfd):
    app = create_app({"CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": {EHR: {"jwks": load_json(SPEC / "jwks-public.json")}},
                      "CDS_PUBLIC_BASE_URL": BASE, "CDS_FEEDBACK_DB": ":memory:", "CDS_LOG_LEVEL": "INFO"})
    client = app.test_client()
    canary = token(aud="https://wrong.example.org")  # a real-looking JWT that will be refused
    bodies = []
    for path in (SERVICE, FEEDBACK, "/cds-services/nope", "/cds-services/nope/feedback"):
        resp = call(client, canary, path)
        bodies.append(resp.get_data(as_text=True))
    bodies.append(client.get("/cds-services", headers={"Authorization": f"Bearer {canary}"}).get_data(as_text=True))
    out, err = capfd.readouterr()
    assert '"status":401' in err
    for text in bodies + [out, err]:
        assert canary not in text and canary.split(".")[1] not in text


@responses.activate
def test_unknown_kid_refreshes_the_cached_jwks_at_most_every_10_seconds():
    from cds_service.auth import IssuerConfig, JWTVerifier
    from cds_service.errors import Unauthorized
    from cds_service.fhir_client import new_session
    url = "https://rotating.example.org/jwks"
    old = RSAKey.generate_key(2048, parameters={"kid": "old"})
    new = RSAKey.generate_key(2048, parameters={"kid": "new"})
    responses.get(url, json={"keys": [old.as_dict(private=False)]})
    responses.get(url, json={"keys": [old.as_dict(private=False), new.as_dict(private=False)]})
    now = [time.time()]
    verifier = JWTVerifier({RSA_EHR: IssuerConfig(jwks_url=url)}, new_session(), clock=lambda: now[0])
    aud = BASE + SERVICE
    assert verifier.verify(token(alg="RS384", key=old, kid="old", iss=RSA_EHR), aud)["iss"] == RSA_EHR
    with pytest.raises(Unauthorized):  # rotated key seen 1 s after the fetch: no refetch yet
        now[0] += 1
        verifier.verify(token(alg="RS384", key=new, kid="new", iss=RSA_EHR), aud)
    now[0] += 10
    assert verifier.verify(token(alg="RS384", key=new, kid="new", iss=RSA_EHR), aud)["iss"] == RSA_EHR
    assert len(responses.calls) == 2


def test_replay_is_refused_by_another_worker_sharing_the_database(tmp_path):
    """Two app instances (two gunicorn workers) on one SQLite file share the jti log."""
    config = {"CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": {EHR: {"jwks": load_json(SPEC / "jwks-public.json")}},
              "CDS_PUBLIC_BASE_URL": BASE, "CDS_FEEDBACK_DB": str(tmp_path / "shared.sqlite3")}
    first, second = create_app(config).test_client(), create_app(config).test_client()
    tok = token(jti="shared-once")
    assert call(first, tok).status_code == 200
    assert call(second, tok).status_code == 401


SANDBOX = "https://sandbox.cds-hooks.org"
SANDBOX_JKU = "https://sandbox.cds-hooks.org/.well-known/jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"
SANDBOX_KEY = ECKey.import_key((Path(__file__).parent / "auth_keys" / "sandbox-ecprivkey-PUBLIC-DO-NOT-TRUST.pem")
                               .read_text())


def sandbox_token(aud: str) -> str:
    """Header and claims as the sandbox builds them (tests/auth_keys/README.md), signed with its key."""
    now = int(time.time())
    header = {"alg": "ES384", "typ": "JWT", "kid": SANDBOX_KID, "jku": SANDBOX_JKU}
    claims = {"iss": SANDBOX, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4())}
    return jwt.encode(header, claims, SANDBOX_KEY, algorithms=["ES384"])


@pytest.mark.parametrize("entry", [
    # The README's entry for the sandbox: its key set inline, nothing fetched.
    lambda: {"jwks": load_json(CONFORMANCE / "sandbox" / "sandbox.cds-hooks.org-jwks.json")},
    # The same with its jku allowlisted: the inline key set still wins while it holds the kid.
    lambda: {"jwks": load_json(CONFORMANCE / "sandbox" / "sandbox.cds-hooks.org-jwks.json"), "jku": [SANDBOX_JKU]},
], ids=["inline", "inline-and-jku"])
@responses.activate
def test_a_sandbox_shaped_token_is_verified_with_the_inline_key_set_without_a_fetch(entry):
    app = create_app({"CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": {SANDBOX: entry()}, "CDS_PUBLIC_BASE_URL": BASE,
                      "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z"})
    client = app.test_client()
    assert call(client, sandbox_token(BASE + SERVICE)).status_code == 200
    fb = load_json(SPEC / "feedback-accepted.json")
    assert call(client, sandbox_token(BASE + FEEDBACK), FEEDBACK, fb).status_code == 200
    assert len(responses.calls) == 0  # any fetch would fail here: responses has no URL registered


@responses.activate
def test_a_kid_missing_from_the_inline_key_set_is_fetched_from_the_allowlisted_jku():
    rotated = RSAKey.generate_key(2048, parameters={"kid": "rotated"})
    responses.get(JKU, json={"keys": [rotated.as_dict(private=False)]})
    app = create_app({"CDS_AUTH_MODE": "jwt", "CDS_PUBLIC_BASE_URL": BASE, "CDS_FEEDBACK_DB": ":memory:",
                      "CDS_TRUSTED_ISSUERS": {JKU_EHR: {"jwks": {"keys": [JKU_PRIVATE.as_dict(private=False)]},
                                                        "jku": [JKU]}}})
    client = app.test_client()
    assert call(client, token(alg="RS384", key=JKU_PRIVATE, kid="jku-1", iss=JKU_EHR, jku=JKU)).status_code == 200
    assert len(responses.calls) == 0
    assert call(client, token(alg="RS384", key=rotated, kid="rotated", iss=JKU_EHR, jku=JKU)).status_code == 200
    assert len(responses.calls) == 1


def test_a_jti_that_cannot_be_checked_is_503_and_cards_without_jwt_still_answer(tmp_path):
    config = {"CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": {EHR: {"jwks": load_json(SPEC / "jwks-public.json")}},
              "CDS_PUBLIC_BASE_URL": BASE, "CDS_FEEDBACK_DB": str(tmp_path / "db.sqlite3")}
    app = create_app(config)
    client = app.test_client()
    assert call(client, token()).status_code == 200
    app.extensions["mg_cds"]["feedback"].configure(f"sqlite:///{tmp_path}/gone/db.sqlite3")  # the database is gone
    resp = call(client, token())
    assert resp.status_code == 503
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    assert resp.get_json()["issue"][0]["code"] == "transient"
    store = app.extensions["mg_cds"]["feedback"]
    store.configure(f"sqlite:///{tmp_path}/db.sqlite3")  # back: the queued issued-card rows are written
    assert store.flush_quietly() and store.pending() == 0


def test_jti_rows_are_kept_until_the_token_expires_plus_leeway_then_purged(tmp_path):
    from cds_service import storage_store
    from cds_service.feedback import FeedbackStore
    store = FeedbackStore(str(tmp_path / "jti.sqlite3"))
    t0 = 1_800_000_000.0
    assert store.first_jti_use(EHR, "a", t0 + 930, t0)  # Epic: 900 s tokens, 30 s leeway
    assert not store.first_jti_use(EHR, "a", t0 + 930, t0 + 929)
    assert store.first_jti_use(EHR, "a", t0 + 2000, t0 + 931)  # expired row: a new token may reuse the id
    assert store.first_jti_use(EHR, "b", t0 + 1000, t0 + 931)
    store.first_jti_use(EHR, "c", t0 + 5000, t0 + 931 + storage_store.PURGE_SECONDS + 2000)  # runs the purge
    import sqlite3
    with sqlite3.connect(tmp_path / "jti.sqlite3") as conn:
        assert sorted(r[0] for r in conn.execute("SELECT jti FROM jwt_jti")) == ["c"]


ORACLE = "https://cds-hooks.cerner.com"  # the issuer Cerner's CDS Hooks draft names (README, Oracle Health)
ORACLE_JWK = "https://authorization.cerner.com/jwk"
ORACLE_KEY = RSAKey.generate_key(2048, parameters={"kid": "oracle-test"})


@pytest.mark.parametrize("entry,jku", [
    ({"jku": ["https://keys.example.org/oracle/jwks"]}, "https://keys.example.org/oracle/jwks"),
    ({"jwks_url": ORACLE_JWK}, ORACLE_JWK),
    ({"jwks_url": ORACLE_JWK}, None),
], ids=["jku-allowlisted", "jwk-endpoint-as-jku", "jwk-endpoint-no-jku"])
@responses.activate
def test_the_readme_issuer_entries_for_oracle_health_verify_a_token_from_that_issuer(entry, jku):
    """The draft gives the issuer and the key endpoint, not the token's algorithm: RS384 is assumed here."""
    responses.get(jku or ORACLE_JWK, json={"keys": [ORACLE_KEY.as_dict(private=False)]})
    app = create_app({"CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": {ORACLE: entry}, "CDS_PUBLIC_BASE_URL": BASE,
                      "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z"})
    client = app.test_client()
    pv = "/cds-services/mg-patient-view"
    tok = token(alg="RS384", key=ORACLE_KEY, kid="oracle-test", iss=ORACLE, jku=jku, aud=BASE + pv)
    assert call(client, tok, pv, load_json(
        SCENARIOS / "pv-also-due-folds-info-cards" / "request.json")).status_code == 200
    other = token(alg="RS384", key=ORACLE_KEY, kid="oracle-test", iss=ORACLE, jku="https://evil.example.org/jwks",
                  aud=BASE + pv)
    assert call(client, other, pv).status_code == 401  # a jku not on the list
    assert [c.request.url for c in responses.calls] == [jku or ORACLE_JWK]
