"""CDS Hooks 2.0 JWT verification (spec section "Trusting CDS Clients").

Only ES384 and RS384 are accepted. The issuer must be on the allowlist. Its
keys: the inline JWKS when it holds the token's ``kid`` (the header's ``jku`` is
then not fetched, so it need not be allowlisted); otherwise they are fetched from
the header's ``jku`` when that URL is allowlisted for the issuer, else from the
issuer's ``jwks_url``. ``aud`` (a string, or a list every element of which is
accepted) must be one of the accepted audiences: the values of ``CDS_JWT_AUDIENCE``
when set (Epic's ``aud`` is typed in by each health system and need not be the URL),
else the called URL exactly. ``exp``, ``iat`` and ``jti`` are required; ``nbf``, when sent,
is honoured with the leeway (Epic sets it 5 minutes before ``iat``); a ``kid`` is
matched as an opaque string (Epic's are base64, with ``+``, ``/`` and ``=``). A ``jti``
is accepted once per issuer until the token expires (plus leeway), across every
replica sharing the database."""
from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence, cast

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .errors import Unauthorized
from .fhir_client import BodyLimit, read_capped

ALLOWED_ALGS = ("ES384", "RS384")
MIN_REFRESH_SECONDS = 10.0


@dataclass
class IssuerConfig:
    jwks_url: str | None = None
    jwks: dict | None = None
    jku: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, issuer: str, value: Any) -> "IssuerConfig":
        if isinstance(value, str):
            return cls(jwks_url=value)
        if isinstance(value, dict) and "keys" in value:
            return cls(jwks=value)
        if isinstance(value, dict):
            return cls(jwks_url=value.get("jwks_url"), jwks=value.get("jwks"), jku=list(value.get("jku", [])))
        raise ValueError(f"trusted issuer {issuer!r}: expected a JWKS URL, a JWKS or an object")

    def allowed_jku(self) -> set[str]:
        return set(self.jku) | ({self.jwks_url} if self.jwks_url else set())

    @cached_property
    def inline_keys(self) -> KeySet | None:
        return KeySet.import_key_set(cast(Any, self.jwks)) if self.jwks and self.jwks.get("keys") else None


def load_trusted_issuers(value: Any) -> dict[str, IssuerConfig]:
    """``value`` is a path to a JSON file, or the decoded mapping itself."""
    if not value:
        return {}
    if isinstance(value, str):
        with open(value, encoding="utf-8") as fh:
            value = json.load(fh)
    return {iss: IssuerConfig.parse(iss, v) for iss, v in value.items()}


def configured_audiences(value: Any) -> tuple[str, ...]:
    """``CDS_JWT_AUDIENCE``: comma-separated accepted ``aud`` values (empty: none configured)."""
    return tuple(a.strip() for a in str(value or "").split(",") if a.strip())


def _b64json(part: str) -> dict:
    padded = part + "=" * (-len(part) % 4)
    data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


class JWTVerifier:
    def __init__(self, issuers: dict[str, IssuerConfig], session: requests.Session, *, leeway: int = 30,
                 cache_seconds: float = 3600, max_jwks_bytes: int = 65536,
                 clock: Callable[[], float] = time.time,
                 first_use: Callable[[str, str, float, float], bool] | None = None):
        self.issuers = issuers
        self._session = session
        self._leeway = leeway
        self._cache_seconds = cache_seconds
        self._max_bytes = max_jwks_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._jwks: dict[str, tuple[float, KeySet]] = {}  # url -> (fetched at, keys)
        self._seen_jti: dict[tuple[str, str], float] = {}  # (iss, jti) -> exp, when no shared store
        self._first_use = first_use

    def verify(self, token: str, audience: str | Sequence[str]) -> dict[str, Any]:
        """The verified claims; ``audience``: the accepted ``aud`` value(s)."""
        accepted = (audience,) if isinstance(audience, str) else tuple(audience)
        parts = token.split(".")
        if len(parts) != 3:
            raise Unauthorized("the bearer token is not a compact JWS")
        try:
            header, unverified = _b64json(parts[0]), _b64json(parts[1])
        except (ValueError, UnicodeError):
            raise Unauthorized("the bearer token's header or claims are not valid base64url JSON") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGS:
            raise Unauthorized(f"JWT alg '{alg}' is not accepted; use ES384 or RS384")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or iss not in self.issuers:
            raise Unauthorized("JWT issuer is not trusted by this service")
        issuer = self.issuers[iss]
        keys = self._keys_for(issuer, header)
        try:
            token_obj = jwt.decode(token, keys, algorithms=[alg])
        except JoseError as exc:
            raise Unauthorized(f"JWT signature check failed ({exc.error})") from None
        claims = token_obj.claims
        registry = jwt.JWTClaimsRegistry(
            now=int(self._clock()), leeway=self._leeway,
            iss={"essential": True, "value": iss}, aud={"essential": True},
            exp={"essential": True}, iat={"essential": True}, jti={"essential": True})
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise Unauthorized(f"JWT claims rejected ({exc.description or exc.error})") from None
        aud = claims["aud"]
        if any(a not in accepted for a in ([aud] if isinstance(aud, str) else aud)):
            raise Unauthorized("JWT aud is not an audience this service accepts")
        if claims["iat"] > self._clock() + self._leeway:
            raise Unauthorized("JWT iat is in the future")
        self._check_replay(iss, str(claims["jti"]), float(claims["exp"]) + self._leeway)
        return claims

    def _check_replay(self, iss: str, jti: str, keep_until: float) -> None:
        """``first_use`` (the shared store) raises StorageUnavailable (503) when it cannot tell."""
        now = self._clock()
        if self._first_use is not None:
            if not self._first_use(iss, jti, keep_until, now):
                raise Unauthorized("JWT jti was already used (replay)")
            return
        with self._lock:
            if len(self._seen_jti) > 10000:
                self._seen_jti = {k: v for k, v in self._seen_jti.items() if v > now}
            if self._seen_jti.get((iss, jti), 0.0) > now:
                raise Unauthorized("JWT jti was already used (replay)")
            self._seen_jti[(iss, jti)] = keep_until

    def _keys_for(self, issuer: IssuerConfig, header: dict) -> KeySet:
        jku, kid = header.get("jku"), header.get("kid")
        inline = issuer.inline_keys
        if inline is not None and kid and self._has_kid(inline, kid):
            return inline  # a configured key: nothing is fetched, the jku is only a hint
        if jku is not None and jku not in issuer.allowed_jku():
            raise Unauthorized("JWT jku is not on the issuer's allowlist")
        url = jku or issuer.jwks_url
        if url is None:
            if inline is not None and not kid:
                return inline
            raise Unauthorized("JWT kid is not in the issuer's key set")
        keys = self._cached(url, refresh=False)
        if kid and not self._has_kid(keys, kid):
            keys = self._cached(url, refresh=True)
        if kid and not self._has_kid(keys, kid):
            raise Unauthorized("JWT kid is not in the issuer's key set")
        return keys

    @staticmethod
    def _has_kid(keys: KeySet, kid: str) -> bool:
        return any(k.kid == kid for k in keys.keys)

    def _cached(self, url: str, refresh: bool) -> KeySet:
        now = self._clock()
        with self._lock:
            hit = self._jwks.get(url)
        if hit and (now - hit[0] < self._cache_seconds) and not (refresh and now - hit[0] >= MIN_REFRESH_SECONDS):
            return hit[1]
        keys = self._fetch(url)
        with self._lock:
            self._jwks[url] = (now, keys)
        return keys

    def _fetch(self, url: str) -> KeySet:
        try:
            with self._session.get(url, timeout=(2.0, 3.0), stream=True, allow_redirects=False) as resp:
                if resp.status_code != 200:
                    raise Unauthorized(f"the issuer's JWKS could not be fetched ({resp.status_code})")
                try:
                    body = read_capped(resp, self._max_bytes, time.monotonic() + 5.0)
                except BodyLimit as exc:
                    raise Unauthorized(f"the issuer's JWKS was refused ({exc})") from None
            return KeySet.import_key_set(json.loads(body))
        except requests.RequestException:
            raise Unauthorized("the issuer's JWKS could not be fetched") from None
        except (ValueError, JoseError):
            raise Unauthorized("the issuer's JWKS is not a valid key set") from None
