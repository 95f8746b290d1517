"""JWTs shaped like Epic's documented ones ("Documentation - Epic on FHIR", CDS Hooks tutorial,
https://fhir.epic.com/Documentation?docId=cds-hooks , "Trusting CDS Clients"): header ``alg`` RS384,
``jku`` the organisation's key-set URL, ``kid`` base64 with ``+``, ``/`` and ``=``, ``typ`` JWT; claims
``aud`` typed in by the health system, ``iss`` its FHIR base URL, ``sub`` the client id, a 900 s
lifetime (exp - iat in Epic's example) and ``nbf`` 5 minutes before ``iat``. Signed with a test-only
key (tests/auth_keys/README.md)."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import responses
from joserfc import jwt
from joserfc.jwk import RSAKey

from cds_service import create_app
from cds_service.auth import IssuerConfig, JWTVerifier, configured_audiences
from cds_service.errors import Unauthorized
from cds_service.fhir_client import new_session

from .conftest import NOW, SCENARIOS, load_json

ORG = "https://ehr.example.org/interconnect-instance-oauth"
ISS = ORG + "/api/FHIR/R4"  # Epic: "the FHIR endpoint of the organization"
JKU = ORG + "/api/epic/2019/Security/Open/PublicKeys/530013/530013"  # the path of Epic's example jku
EPIC_KID = "d3bmo5HzW61TUgikHZH+A8Tx4UOXz2iOs4KvVU4eLY0="  # the kid of Epic's example header
KIDS = [EPIC_KID, "q/7Lr+Xa9vBn/0Wm3dYt+Ku2Ce8Hs5Jf1Gp4Ro6Ni0E=", "ab/+=="]
BASE = "https://cds.example.org"
SERVICE = "/cds-services/mg-order-select"
FEEDBACK = SERVICE + "/feedback"
TYPED_IN = "https://example.com/savecdshooksrequest"  # Epic's example aud: not the URL it calls
KEY_PEM = (Path(__file__).parent / "auth_keys" / "epic-shaped-rs384-TEST-ONLY-DO-NOT-TRUST.pem").read_text()
LIFETIME, NBF_BEFORE, LEEWAY = 900, 300, 30


def key(kid: str) -> RSAKey:
    return RSAKey.import_key(KEY_PEM, parameters={"kid": kid})


def epic_token(*, kid: str = EPIC_KID, aud: str | list[str] = BASE + SERVICE, iat: int | None = None,
               nbf_offset: int = -NBF_BEFORE) -> str:
    iat = int(time.time()) if iat is None else iat
    header = {"alg": "RS384", "jku": JKU, "kid": kid, "typ": "JWT"}
    claims = {"aud": aud, "exp": iat + LIFETIME, "iat": iat, "iss": ISS, "jti": str(uuid.uuid4()),
              "nbf": iat + nbf_offset, "sub": "12345678-ce08-4ac7-ac0c-12345678"}
    return jwt.encode(header, claims, key(kid), algorithms=["RS384"])


def serve_jwks() -> None:
    """The organisation's key set at its jku, holding the key under every test kid."""
    responses.get(JKU, json={"keys": [key(k).as_dict(private=False) for k in KIDS]})


def app_client(**config):
    app = create_app({"CDS_AUTH_MODE": "jwt", "CDS_TRUSTED_ISSUERS": {ISS: {"jku": [JKU]}},
                      "CDS_PUBLIC_BASE_URL": BASE, "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": NOW,
                      "CDS_JWT_LEEWAY_SECONDS": LEEWAY, "CDS_LOG_LEVEL": "WARNING", **config})
    return app.test_client()


def call(client, tok: str, path: str = SERVICE):
    body = (load_json(Path(__file__).parent / "epic_feedback" / "accepted-suggestion.json") if path == FEEDBACK
            else load_json(SCENARIOS / "ivig-no-iga" / "request.json"))
    return client.post(path, json=body, headers={"Authorization": f"Bearer {tok}"}, base_url=BASE)


@pytest.mark.parametrize("kid", KIDS)
@responses.activate
def test_an_epic_shaped_token_is_verified_with_the_key_set_at_its_allowlisted_jku(kid):
    serve_jwks()
    client = app_client()
    assert call(client, epic_token(kid=kid)).status_code == 200
    assert call(client, epic_token(kid=kid, aud=BASE + FEEDBACK), FEEDBACK).status_code == 200
    assert [c.request.url for c in responses.calls] == [JKU]  # fetched once, then cached


@responses.activate
def test_a_kid_with_plus_slash_and_equals_must_match_exactly():
    serve_jwks()
    client = app_client()
    for near in (EPIC_KID.rstrip("="), EPIC_KID.replace("+", "-"), EPIC_KID.replace("+", " ")):
        assert call(client, epic_token(kid=near)).status_code == 401, near


@responses.activate
def test_an_aud_that_is_not_the_url_is_accepted_only_when_configured():
    serve_jwks()
    assert call(app_client(), epic_token(aud=TYPED_IN)).status_code == 401
    configured = app_client(CDS_JWT_AUDIENCE=f"https://other.example.org/cds, {TYPED_IN}")
    assert call(configured, epic_token(aud=TYPED_IN)).status_code == 200
    assert call(configured, epic_token(aud=TYPED_IN), FEEDBACK).status_code == 200  # Epic types in one aud
    assert call(configured, epic_token(aud=[TYPED_IN, "https://other.example.org/cds"])).status_code == 200
    assert call(configured, epic_token(aud=BASE + SERVICE)).status_code == 401  # the configured values replace the URL
    assert call(app_client(CDS_JWT_AUDIENCE=f"{TYPED_IN},{BASE + SERVICE}"), epic_token(aud=BASE + SERVICE)).status_code == 200
    for other in ("https://example.com/savecdshooksrequest/x", "https://evil.example.org", [TYPED_IN, "https://evil"]):
        assert call(configured, epic_token(aud=other)).status_code == 401, other


@responses.activate
def test_nbf_in_the_future_beyond_the_leeway_is_rejected_and_within_it_accepted():
    serve_jwks()
    client = app_client()
    assert call(client, epic_token(nbf_offset=LEEWAY + 90)).status_code == 401
    assert call(client, epic_token(nbf_offset=LEEWAY - 10)).status_code == 200


def verifier_at(clock: list[float]) -> JWTVerifier:
    issuer = IssuerConfig(jwks={"keys": [key(EPIC_KID).as_dict(private=False)]}, jku=[JKU])
    return JWTVerifier({ISS: issuer}, new_session(), leeway=LEEWAY, clock=lambda: clock[0])


@pytest.mark.parametrize("nbf_offset,at,ok", [
    (-NBF_BEFORE, -LEEWAY - 1, False),        # Epic's nbf is before iat, but iat is in the future beyond the leeway
    (-NBF_BEFORE, -LEEWAY, True),             # iat - leeway: the first accepted second
    (-NBF_BEFORE, 0, True),
    (-NBF_BEFORE, LIFETIME + LEEWAY - 1, True),  # the last accepted second: 900 s lifetime plus leeway
    (-NBF_BEFORE, LIFETIME + LEEWAY, False),  # expired
    (100, 100 - LEEWAY - 1, False),           # an nbf after iat: not yet valid beyond the leeway
    (100, 100 - LEEWAY, True),                # within the leeway
], ids=["before-iat", "iat-minus-leeway", "at-iat", "last-second", "expired", "nbf-ahead", "nbf-within-leeway"])
def test_the_validity_window_of_an_epic_token_with_the_leeway(nbf_offset, at, ok):
    iat = 1_800_000_000
    tok = epic_token(iat=iat, nbf_offset=nbf_offset)
    verifier = verifier_at([float(iat + at)])
    if ok:
        assert verifier.verify(tok, BASE + SERVICE)["iss"] == ISS
    else:
        with pytest.raises(Unauthorized):
            verifier.verify(tok, BASE + SERVICE)


def test_configured_audiences_are_comma_separated_and_trimmed():
    assert configured_audiences("") == ()
    assert configured_audiences(f" {TYPED_IN} ,, https://b.example/x ") == (TYPED_IN, "https://b.example/x")
