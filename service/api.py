"""The HTTP API (DESIGN.md, contract 3): the app factory, thin routes, errors, request context.

Routes translate HTTP and delegate to the runtime. Responses are serialised with orjson straight
from the runtime's dicts and arrays; inference on many rows runs in a worker thread.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio.to_thread
import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    error_body,
    field_path,
    problem_of,
)
from service.logging_config import request_id
from service.metrics import ServiceMetrics
from service.runtime import ModelRuntime, ServedModel
from service.schemas import (
    ErrorResponse,
    ExplainResponse,
    Health,
    ModelInfo,
    PredictResponse,
    Ready,
    ReloadResponse,
    parse_reload,
)
from service.settings import Settings

log = logging.getLogger("service.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
PARAMETER_LOCATIONS = ("body", "query", "header", "path", "cookie")
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "not JSON"),
        (413, "too many rows or too large a body"),
        (415, "not application/json"),
        (422, "a field missing, unknown, null, mistyped or out of range"),
        (503, "no model loaded and warmed yet"),
    )
}


class OrjsonResponse(JSONResponse):
    """JSON rendered by orjson; numpy arrays are written directly."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# Dependencies are `async def` on purpose: FastAPI runs a plain `def` dependency in the thread
# pool, which costs a thread hop per dependency per request (three on /predict).


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_runtime(request: Request) -> ModelRuntime:
    runtime: ModelRuntime = request.app.state.runtime
    return runtime


async def get_metrics(request: Request) -> ServiceMetrics:
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_model(runtime: Annotated[ModelRuntime, Depends(get_runtime)]) -> ServedModel:
    return runtime.model


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
ModelDep = Annotated[ServedModel, Depends(get_model)]

router = APIRouter()


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Score rows: instances, or a context with candidates",
)
async def predict(request: Request, model: ModelDep, settings: SettingsDep) -> Response:
    """`{"instances": [...]}` or `{"context": {...}, "candidates": [...]}`; scores in order."""
    body = await read_json_body(request, settings.max_body_bytes)
    parsed = model.parse_predict(body)
    if len(parsed.rows) >= settings.threadpool_min_rows:
        answer = await anyio.to_thread.run_sync(model.predict, parsed)
    else:
        answer = model.predict(parsed)
    return OrjsonResponse(answer)


@router.get(
    "/explain",
    response_model=ExplainResponse,
    responses=ERRORS,
    summary="Take one row apart: bias, linear terms and every pair",
)
async def explain(
    request: Request,
    model: ModelDep,
    top_k: Annotated[
        int | None,
        Query(ge=1, description="add `top_pairs`: the k pairs of largest |contribution|"),
    ] = None,
) -> Response:
    """One row as query parameters `field=value`; every pair, sorted by |contribution|."""
    return OrjsonResponse(model.explain_query(request.query_params.multi_items(), top_k))


@router.get("/model", response_model=ModelInfo, responses=ERRORS, summary="The served model")
async def model_card(model: ModelDep) -> Response:
    """Name, version, task, fields with kinds and examples, metrics, global attention."""
    return OrjsonResponse(model.card())


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Response:
    return OrjsonResponse({"status": "ok"})


@router.get("/readyz", response_model=Ready, responses=ERRORS, summary="A model is loaded and warm")
async def readyz(model: ModelDep) -> Response:
    return OrjsonResponse({"status": "ready", "model": model.ref})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(collector: MetricsDep) -> Response:
    return Response(collector.render(), media_type=collector.content_type)


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses={**ERRORS, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}},
    summary="Load, verify and warm a new bundle, then swap it in",
)
async def reload(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(description="one of AFM_API_KEYS")] = None,
) -> Response:
    """Body (optional): `{"version": n}` or `{"name": ..., "version": ...}`; default newest."""
    authorize(settings, x_api_key)
    body = await read_json_body(request, settings.max_body_bytes, optional=True)
    options = parse_reload(body)
    previous = runtime.model.ref if runtime.ready else None
    served = await anyio.to_thread.run_sync(runtime.reload, options.name, options.version)
    return OrjsonResponse({"model": served.ref, "previous": previous})


def authorize(settings: Settings, key: str | None) -> None:
    """Admin routes need one of the configured API keys; none configured disables them."""
    if not settings.api_keys:
        raise Forbidden("admin routes are disabled: no API key is configured (AFM_API_KEYS)")
    if key is None:
        raise Unauthorized("an X-API-Key header is required", [("x-api-key", "missing")])
    given = key.encode()
    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    if not any(secrets.compare_digest(given, k) for k in keys):
        raise Unauthorized("the X-API-Key is not valid", [("x-api-key", "not a valid key")])


async def read_json_body(request: Request, limit: int, optional: bool = False) -> bytes:
    """The body of a JSON request: 415 unless declared JSON, 413 beyond `limit` bytes."""
    content_type = request.headers.get("content-type")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest("Content-Length is not a number", [("content-length", "not a number")])
        if int(declared) > limit:
            raise PayloadTooLarge(
                f"the body is {declared} bytes, the limit is {limit}",
                [("body", f"larger than {limit} bytes")],
            )
    if not (optional and content_type is None and declared in (None, "0")):
        media = (content_type or "").split(";")[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            raise UnsupportedMediaType(
                f"send the body as application/json, not {content_type or 'without a type'}",
                [("content-type", "not application/json")],
            )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"the body is over {limit} bytes", [("body", f"larger than {limit} bytes")]
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    headers = {"Retry-After": "1"} if exc.status_code == 503 else None
    return OrjsonResponse(exc.body(), status_code=exc.status_code, headers=headers)


async def request_validation_error(request: Request, exc: Exception) -> Response:
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
    assert isinstance(exc, StarletteHTTPException)
    kinds: dict[int, type[ServiceError]] = {404: NotFound, 405: MethodNotAllowed}
    kind = kinds.get(exc.status_code)
    code = kind.code if kind else "http_error"
    message = f"no route {request.method} {request.url.path}" if kind is NotFound else exc.detail
    return OrjsonResponse(
        error_body(code, str(message)), status_code=exc.status_code, headers=exc.headers
    )


class RequestContext:
    """Per request: X-Request-ID (honoured or made), X-Served-By, metrics, access log, last 500."""

    def __init__(
        self, app: ASGIApp, metrics: ServiceMetrics, replica: str, access_log: bool
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.replica = replica.encode("latin-1", "replace")
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        token = request_id.set(rid)
        start = time.perf_counter()
        status, started = 500, False
        extra = [(b"x-request-id", rid.encode()), (b"x-served-by", self.replica)]

        async def send_with_context(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except Exception:
            log.exception("unhandled error")
            status = 500
            if not started:
                body = orjson.dumps(error_body("internal_error", "internal error"))
                response = Response(body, status_code=500, media_type="application/json")
                await response(scope, receive, send_with_context)
        finally:
            seconds = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe_request(route, scope["method"], status, seconds)
            if self.access_log:
                log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 3),
                    },
                )
            request_id.reset(token)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if REQUEST_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex


def _load_at_start(runtime: ModelRuntime, settings: Settings) -> None:
    try:
        runtime.load(settings.model_name, settings.model_version)
    except ServiceError as error:
        log.error("no model served at start", extra={"reason": error.message})


def create_app(settings: Settings | None = None, runtime: ModelRuntime | None = None) -> FastAPI:
    """The service: loads the configured bundle in the background; ready once it is warm."""
    settings = settings or Settings()
    metrics = runtime.metrics if runtime and runtime.metrics else ServiceMetrics()
    runtime = runtime or ModelRuntime(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if not runtime.ready:
            threading.Thread(
                target=_load_at_start, args=(runtime, settings), name="load", daemon=True
            ).start()
        yield

    app = FastAPI(
        title="AFM prediction service",
        version="1",
        description="Scores and explanations from an Attentional Factorization Machine bundle.",
        default_response_class=OrjsonResponse,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.metrics = metrics
    app.include_router(router)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, request_validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(
        RequestContext, metrics=metrics, replica=settings.replica, access_log=settings.access_log
    )
    install_openapi(app, runtime)
    return app


def install_openapi(app: FastAPI, runtime: ModelRuntime) -> None:
    """OpenAPI that documents the served model's real fields in `/predict` and `/explain`."""
    cache: dict[tuple[str, int] | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        model = runtime.model if runtime.ready else None
        key = (model.name, model.version) if model else None
        if key not in cache:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            if model is not None:
                document_model(schema, model)
            cache.clear()
            cache[key] = schema
        return cache[key]

    app.openapi = openapi  # type: ignore[method-assign]


def document_model(schema: dict[str, Any], model: ServedModel) -> None:
    """Put the model's request schemas and example requests into an OpenAPI document."""
    body, definitions = model.schemas.openapi("#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
    schema["info"]["description"] += f" Serving {model.name} version {model.version}."
    context, candidates = example_request(model)
    predict = schema["paths"]["/predict"]["post"]
    predict["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": body,
                "examples": {
                    "ranking": {
                        "summary": "a context and its candidates",
                        "value": {"context": context, "candidates": candidates},
                    },
                    "instances": {
                        "summary": "whole rows, with explanations",
                        "value": {
                            "instances": [{**context, **candidates[0]}],
                            "explain": True,
                            "top_k": 3,
                        },
                    },
                },
            }
        },
    }
    fields = [
        {
            "name": field.name,
            "in": "query",
            "required": True,
            "schema": {"type": "string" if field.kind == "categorical" else "number"},
            "example": row[field.name],
            "description": f"{field.kind} field",
        }
        for field in model.encoder.fields
        for row in [{**context, **candidates[0]}]
    ]
    explain = schema["paths"]["/explain"]["get"]
    explain["parameters"] = fields + explain.get("parameters", [])


def example_request(model: ServedModel) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A valid ranking request built from each field's most frequent values."""
    card = {f["name"]: f["examples"] for f in model.card()["fields"]}
    item = "item" if "item" in card else model.names[-1]
    context = {name: (examples or [""])[0] for name, examples in card.items() if name != item}
    return context, [{item: value} for value in card[item] or [""]]
