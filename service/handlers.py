"""Exception handlers: every error the app raises or FastAPI detects becomes the one error shape."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.errors import (
    MethodNotAllowed,
    NotFound,
    ServiceError,
    ValidationFailed,
    error_body,
    field_path,
    problem_of,
)
from service.responses import OrjsonResponse

PARAMETER_LOCATIONS = ("body", "query", "header", "path", "cookie")
RESPONSE_HEADERS = {503: {"Retry-After": "1"}, 408: {"Connection": "close"}}


async def service_error(request: Request, exc: Exception) -> Response:
    """A ServiceError as its status and body; a 503 tells the client to retry in a second, a 408
    closes the connection (the rest of its body may never come)."""
    assert isinstance(exc, ServiceError)
    headers = RESPONSE_HEADERS.get(exc.status_code)
    return OrjsonResponse(exc.body(), status_code=exc.status_code, headers=headers)


async def request_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's parameter validation (`top_k`, headers) as a 422 naming each parameter."""
    assert isinstance(exc, RequestValidationError)
    details = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        if loc and loc[0] in PARAMETER_LOCATIONS:
            loc = loc[1:]
        details.append((field_path(loc), problem_of(error)))
    failure = ValidationFailed("the request parameters are not valid", details)
    return OrjsonResponse(failure.body(), status_code=failure.status_code)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's routing errors (no such route, wrong method) in the one error shape."""
    assert isinstance(exc, StarletteHTTPException)
    kinds: dict[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed}
    kind = kinds.get(exc.status_code)
    code = kind.code if kind else "http_error"
    message = f"no route {request.method} {request.url.path}" if kind is NotFound else exc.detail
    return OrjsonResponse(
        error_body(code, str(message)), status_code=exc.status_code, headers=exc.headers
    )


def install_handlers(app: FastAPI) -> None:
    """Register the handlers on an app."""
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
