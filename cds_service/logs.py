"""JSON-lines logging. Log records carry request ids, service ids, statuses
and timings only: never tokens, request bodies or patient data."""
from __future__ import annotations

import json
import logging
import sys
import time

LOGGER_NAME = "mg_cds"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "event": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        return json.dumps(out, separators=(",", ":"), default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (gunicorn and test runners swap it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


def configure(level: str) -> logging.Logger:
    logger = get_logger()
    if not any(getattr(h, "_mg_cds", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(JSONFormatter())
        handler._mg_cds = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    return logger


def log(level: int, event: str, **fields: object) -> None:
    get_logger().log(level, event, extra={"fields": fields})
