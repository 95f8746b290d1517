"""Configuration: defaults, overridden by environment variables of the same
name, overridden by the dict given to ``create_app``."""
from __future__ import annotations

import os
from typing import Any

from . import egress
from .profiles import PROFILES

DEFAULTS: dict[str, Any] = {
    # "jwt" verifies CDS Hooks 2.0 JWTs; "off" is for local development only.
    "CDS_AUTH_MODE": "jwt",
    # Path to a JSON file: issuer -> JWKS URL, inline JWKS, or
    # {"jwks_url": ..., "jwks": ..., "jku": [allowed jku URLs]}.
    "CDS_TRUSTED_ISSUERS": "",
    # The database (feedback, issued cards, JWT ids): sqlite:////abs/path or postgresql://...;
    # empty = CDS_FEEDBACK_DB. Replicas share one PostgreSQL database.
    "CDS_DATABASE_URL": "",
    # Key of the keyed hash of the patient reference in the issued-card log (a Secret in production).
    "CDS_PATIENT_HASH_KEY": "",
    # SQLite path for feedback (relative paths are under the instance folder).
    "CDS_FEEDBACK_DB": "feedback.sqlite3",
    # ISO 8601 instant that fixes "now" (reproducible evaluation); empty = clock.
    "CDS_NOW": "",
    # Public base URL the EHR calls (JWT aud); empty = the request's own URL.
    "CDS_PUBLIC_BASE_URL": "",
    # Comma-separated URL prefixes of the FHIR servers the prefetch fallback may call, each trusted as
    # configured (any address, http too); empty = public https servers only (cds_service/egress.py).
    "CDS_ALLOWED_FHIR_SERVERS": "",
    # Development only: with the allowlist empty, call any fhirServer (loopback, private, http); loud warning.
    "CDS_ALLOW_PRIVATE_FHIR_SERVERS": False,
    "CDS_MAX_BODY_BYTES": 5 * 1024 * 1024,
    "CDS_FHIR_CONNECT_TIMEOUT": 2.0,
    "CDS_FHIR_READ_TIMEOUT": 3.0,
    "CDS_FHIR_MAX_PAGES": 10,
    # Largest FHIR response body read by the fallback fetch (larger ones count as a failed fetch).
    "CDS_FHIR_MAX_RESPONSE_BYTES": 32 * 1024 * 1024,
    # PEM file of the CA certificates fhirServer certificates are checked against (a hospital's internal
    # CA); empty = the bundled CA set (certifi). A bundle REPLACES certifi: public fhirServers then fail
    # their TLS check unless it also holds the public roots. The environment's REQUESTS_CA_BUNDLE is not read.
    "CDS_FHIR_CA_BUNDLE": "",
    # Total time budget for completing prefetch over FHIR, in seconds.
    "CDS_DEADLINE_SECONDS": 5.0,
    # Comma-separated JWT aud values accepted on every route INSTEAD OF the called URL (Epic's aud is
    # typed in by each health system: list the called URL too if other clients use it); empty = only
    # the called URL (CDS_PUBLIC_BASE_URL + path).
    "CDS_JWT_AUDIENCE": "",
    "CDS_JWT_LEEWAY_SECONDS": 30,
    # How long a fetched JWKS is trusted before it is fetched again, and the largest JWKS accepted.
    "CDS_JWKS_CACHE_SECONDS": 3600,
    "CDS_JWKS_MAX_BYTES": 64 * 1024,
    "CDS_CORS_ORIGINS": "*",
    "CDS_LOG_LEVEL": "INFO",
    "CDS_RECORD_CARDS": True,
    # Order-sign leaves out a card shown at order-select for the same draft and overridden within
    # CDS_SUPPRESS_REPEATS_HOURS (cds_service.repeats); needs CDS_RECORD_CARDS.
    "CDS_SUPPRESS_REPEATS": True,
    "CDS_SUPPRESS_REPEATS_HOURS": 24.0,
    # The card preview page at /preview (development and review; needs CDS_AUTH_MODE=off).
    "CDS_PREVIEW": False,
    "CDS_FIXTURES_DIR": "fixtures/scenarios",
    "CDS_WORKERS": 2,
    "CDS_THREADS": 4,
    # FHIR validation verdicts remembered per exact resource content; 0 validates every time.
    "CDS_VALIDATION_CACHE": 20000,
    # Generation-0 GC threshold set in each gunicorn worker after gc.freeze().
    "CDS_GC_GEN0": 50000,
    # How cards are written for the client (cds_service.profiles): "auto" picks "epic" when the request's
    # extension has a com.epic.cdshooks.* key, else "spec"; "spec" and "epic" force one.
    "CDS_CLIENT_PROFILE": "auto",
}


class ConfigError(ValueError):
    """A setting the service cannot start with (``mg-cds`` prints it without a traceback)."""


def _coerce(key: str, raw: str) -> Any:
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    try:
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError:
        raise ConfigError(f"{key} must be a number, not {raw!r}") from None
    return raw


def load_config(overrides: dict | None = None, environ: dict | None = None) -> dict[str, Any]:
    """Defaults < environment < explicit overrides."""
    env = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for key in DEFAULTS:
        if key in env:
            config[key] = _coerce(key, env[key])
    config.update(overrides or {})
    if config["CDS_AUTH_MODE"] not in {"jwt", "off"}:
        raise ConfigError("CDS_AUTH_MODE must be 'jwt' or 'off'")
    if config["CDS_CLIENT_PROFILE"] not in PROFILES:
        raise ConfigError(f"CDS_CLIENT_PROFILE must be one of {', '.join(map(repr, PROFILES))}")
    if config["CDS_PREVIEW"] and config["CDS_AUTH_MODE"] != "off":
        # the preview page calls the services without a JWT, and its explain route reads the card log
        raise ConfigError("CDS_PREVIEW needs CDS_AUTH_MODE=off (the preview page is for development and review)")
    bundle = str(config["CDS_FHIR_CA_BUNDLE"])
    if bundle and not os.path.isfile(bundle):
        raise ConfigError(f"CDS_FHIR_CA_BUNDLE {bundle!r} is not a file")
    try:
        egress.policy(config)  # the allowlist parses (cached: create_app and the fetch reuse it)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config
