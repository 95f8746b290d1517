"""Exception hierarchy of the protocol layer. Each maps to one HTTP status
and is rendered as a FHIR OperationOutcome by the app's error handlers."""
from __future__ import annotations

from typing import Any


class CDSError(Exception):
    status = 500
    issue_code = "exception"

    def __init__(self, message: str, *, expression: str | None = None, diagnostics: str | None = None):
        super().__init__(message)
        self.message = message
        self.expression = expression
        self.diagnostics = diagnostics

    def operation_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.message, self.issue_code, expression=self.expression,
                                 diagnostics=self.diagnostics)


class BadRequest(CDSError):
    status = 400
    issue_code = "invalid"


class Unauthorized(CDSError):
    status = 401
    issue_code = "login"


class NotFound(CDSError):
    status = 404
    issue_code = "not-found"


class PayloadTooLarge(CDSError):
    status = 413
    issue_code = "too-costly"


class UnsupportedMediaType(CDSError):
    status = 415
    issue_code = "not-supported"


class PreconditionFailed(CDSError):
    """Data the service cannot work without could be neither prefetched nor fetched."""
    status = 412
    issue_code = "processing"


class FHIRError(Exception):
    """A FHIR server call failed; carries a short reason safe to show (no URL query, no token)."""

    def __init__(self, reason: str, status: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status


def operation_outcome(message: str, code: str = "processing", *, severity: str = "error",
                      expression: str | None = None, diagnostics: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "details": {"text": message}}
    if diagnostics:
        issue["diagnostics"] = diagnostics
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}
