"""Errors that know their HTTP status, and the one JSON shape every error response takes.

{"error": {"code": "validation_error", "message": "...",
           "details": [{"field": "candidates[3].item", "problem": "missing"}]}}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

MAX_DETAILS = 50


class ServiceError(Exception):
    """Base of every error the service answers with; subclasses fix the status and code."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


class BadRequest(ServiceError):
    """The request is malformed beyond validation (not JSON, bad headers)."""

    status_code = 400
    code = "bad_request"


class InvalidJSON(BadRequest):
    """The body is not a JSON document."""

    code = "invalid_json"


class Unauthorized(ServiceError):
    """An admin route called without a valid API key."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """An admin route while no API key is configured."""

    status_code = 403
    code = "forbidden"


class NotFound(ServiceError):
    """No such route, model or version."""

    status_code = 404
    code = "not_found"


class MethodNotAllowed(ServiceError):
    """The route exists but not with this method."""

    status_code = 405
    code = "method_not_allowed"


class RequestTimeout(ServiceError):
    """The client took too long to send its headers or its body; the connection is closed."""

    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(ServiceError):
    """Too large a body, or too many rows in one request."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    """A body that is not declared as `application/json`."""

    status_code = 415
    code = "unsupported_media_type"


class HeadersTooLarge(ServiceError):
    """The request line and headers are larger than the server accepts."""

    status_code = 431
    code = "headers_too_large"


class ValidationFailed(ServiceError):
    """Fields missing, unknown, null, of the wrong type or out of range; details name each one."""

    status_code = 422
    code = "validation_error"


class BundleRefused(ServiceError):
    """A bundle that failed verification on reload; the model served before keeps serving."""

    status_code = 422
    code = "bundle_refused"


class NotReady(ServiceError):
    """No model loaded and warmed yet."""

    status_code = 503
    code = "not_ready"


class Overloaded(ServiceError):
    """Too many requests in flight and queued, or a request that waited past its deadline."""

    status_code = 503
    code = "overloaded"


def error_body(code: str, message: str, details: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """The error shape of contract 3."""
    listed = [{"field": field, "problem": problem} for field, problem in details]
    return {"error": {"code": code, "message": message, "details": listed[:MAX_DETAILS]}}


def field_path(loc: Sequence[int | str]) -> str:
    """`("candidates", 3, "item")` -> `candidates[3].item`; the empty location is the body."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def problem_of(error: Any) -> str:
    """A short description of one pydantic error, for the `problem` of a detail."""
    kind = error.get("type", "")
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if error.get("input", ...) is None:
        return "null is not allowed; " + str(error.get("msg", "")).lower()
    return str(error.get("msg", kind))


def validation_details(errors: Iterable[Any], strip: int = 0) -> list[tuple[str, str]]:
    """Pydantic errors as (field path, problem) pairs, dropping `strip` leading location parts."""
    return [(field_path(tuple(e["loc"])[strip:]), problem_of(e)) for e in errors]
