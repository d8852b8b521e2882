"""The HTTP API (DESIGN.md, contract 3): the app factory and its thin routes.

Routes translate HTTP and delegate: request bodies and queries to the schemas, valid requests to
the runtime. Responses are serialised with orjson straight from the runtime's dicts and arrays;
inference on many rows runs in a worker thread. The middleware, the exception handlers and the
OpenAPI document live beside this module (`middleware`, `handlers`, `openapi`).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import Response
from pydantic import Field, TypeAdapter, ValidationError
from starlette.routing import Match, Route
from starlette.types import Scope

from service.admission import TICKET, Admission, AdmissionGate, Ticket
from service.batching import Batcher
from service.bodies import declared_length, read_limited
from service.drain import Drain
from service.errors import (
    Forbidden,
    NotReady,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    problem_of,
)
from service.handlers import install_handlers
from service.metrics import ServiceMetrics
from service.middleware import RequestContext
from service.openapi import install_openapi
from service.responses import OrjsonResponse
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
from service.v2 import router as v2_router

if TYPE_CHECKING:
    from service.workers import WorkerGroup

log = logging.getLogger("service.api")
STOP_LOADER_SECONDS = 10.0

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "not JSON"),
        (408, "the body took too long to arrive"),
        (413, "too many rows or too large a body"),
        (415, "not application/json"),
        (422, "a field missing, unknown, null, mistyped or out of range"),
        (503, "no model loaded and warmed yet, or overloaded"),
    )
}


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


async def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
ModelDep = Annotated[ServedModel, Depends(get_model)]
DrainDep = Annotated[Drain, Depends(get_drain)]

router = APIRouter()


# /predict and /explain are served by plain Starlette routes (`LeanRoute`): their endpoints take
# the request and read what they need from the app's state, so no dependency is resolved and no
# parameter validated by FastAPI per request. `documented` declares the same endpoints to FastAPI
# for the OpenAPI document only; it is never mounted.


class LeanRoute(Route):
    """A Starlette route for an endpoint that takes the request and answers it. It puts itself in
    `scope["route"]` (the metrics' route label) and answers only its own methods (no implicit
    HEAD)."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]], method: str):
        super().__init__(path, endpoint, methods=[method])
        self.methods = {method}

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


async def predict(request: Request) -> Response:
    """`{"instances": [...]}` or `{"context": {...}, "candidates": [...]}`; scores in order."""
    state = request.app.state
    settings: Settings = state.settings
    model: ServedModel = state.runtime.model
    ticket: Ticket = request.scope[TICKET]
    body = await read_json_body(
        request, settings.max_body_bytes, timeout=settings.body_timeout_seconds
    )
    ticket.check()
    parsed = model.schemas.parse_predict(body)
    batcher: Batcher | None = state.batcher
    if len(parsed.rows) >= settings.threadpool_min_rows:
        answer = await ticket.in_thread(partial(model.predict, parsed))
    elif batcher is not None:
        answer = await batcher.predict(model, parsed)
    else:
        answer = model.predict(parsed)
    return OrjsonResponse(answer)


async def explain(request: Request) -> Response:
    """One row as query parameters `field=value`; every pair, sorted by |contribution|."""
    model: ServedModel = request.app.state.runtime.model
    ticket: Ticket = request.scope[TICKET]
    ticket.check()
    query = request.query_params
    top_k = parse_top_k(query.get("top_k"))
    row = model.schemas.parse_explain_query(query.multi_items(), top_k)
    return OrjsonResponse(model.explain(row, top_k))


TOP_K_DESCRIPTION = "add `top_pairs`: the k pairs of largest |contribution|"
TOP_K: TypeAdapter[int | None] = TypeAdapter(Annotated[int | None, Field(ge=1)])


def parse_top_k(given: str | None) -> int | None:
    """`top_k` of a `GET /explain` query: a whole number of at least 1, when given."""
    if given is None:
        return None
    try:
        top_k: int | None = TOP_K.validate_python(given)
    except ValidationError as error:
        details = [("top_k", problem_of(e)) for e in error.errors(include_url=False)]
        raise ValidationFailed("the request parameters are not valid", details) from None
    return top_k


async def _explain_parameters(
    top_k: Annotated[int | None, Query(ge=1, description=TOP_K_DESCRIPTION)] = None,
) -> None:
    """The query parameters of `GET /explain` as FastAPI documents them (never called)."""


documented = APIRouter()
documented.add_api_route(
    "/predict",
    predict,
    methods=["POST"],
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Score rows: instances, or a context with candidates",
)
documented.add_api_route(
    "/explain",
    explain,
    methods=["GET"],
    response_model=ExplainResponse,
    responses=ERRORS,
    summary="Take one row apart: bias, linear terms and every pair",
    dependencies=[Depends(_explain_parameters)],
)
LEAN_ROUTES = [LeanRoute("/predict", predict, "POST"), LeanRoute("/explain", explain, "GET")]


@router.get("/model", response_model=ModelInfo, responses=ERRORS, summary="The served model")
async def model_card(model: ModelDep) -> Response:
    """Name, version, task, fields with kinds and examples, metrics, global attention."""
    return OrjsonResponse(model.card())


@router.get("/healthz", response_model=Health, summary="The process is alive")
async def healthz() -> Response:
    return OrjsonResponse({"status": "ok"})


@router.get("/readyz", response_model=Ready, responses=ERRORS, summary="A model is loaded and warm")
async def readyz(request: Request, runtime: RuntimeDep, drain: DrainDep) -> Response:
    if drain.draining:
        raise NotReady("the server is draining before it shuts down")
    model = runtime.model.ref
    workers: WorkerGroup | None = request.app.state.workers
    if workers is not None and (waiting := workers.not_ready()) is not None:
        raise NotReady(waiting)
    return OrjsonResponse({"status": "ready", "model": model})


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
    await authorize(settings, x_api_key)
    body = await read_json_body(
        request, settings.max_body_bytes, optional=True, timeout=settings.body_timeout_seconds
    )
    options = parse_reload(body)
    previous = runtime.model.ref if runtime.ready else None
    served = await anyio.to_thread.run_sync(runtime.reload, options.name, options.version)
    workers: WorkerGroup | None = request.app.state.workers
    if workers is not None:
        for problem in await anyio.to_thread.run_sync(workers.announce, served):
            log.error("a worker did not follow the reload", extra={"reason": problem})
    return OrjsonResponse({"model": served.ref, "previous": previous})


async def authorize(settings: Settings, key: str | None) -> None:
    """Admin routes need one of the configured API keys; none configured disables them. A wrong
    key is answered after `auth_failure_delay_seconds`, to slow down guessing."""
    if not settings.api_keys:
        raise Forbidden("admin routes are disabled: no API key is configured (AFM_API_KEYS)")
    if key is None:
        raise Unauthorized("an X-API-Key header is required", [("x-api-key", "missing")])
    given = key.encode()
    keys = [k.get_secret_value().encode() for k in settings.api_keys]
    if not any(secrets.compare_digest(given, k) for k in keys):
        await anyio.sleep(settings.auth_failure_delay_seconds)
        raise Unauthorized("the X-API-Key is not valid", [("x-api-key", "not a valid key")])


async def read_json_body(
    request: Request, limit: int, optional: bool = False, timeout: float | None = None
) -> bytes:
    """The body of a JSON request: 415 unless declared JSON, 413 beyond `limit` bytes, 408 when
    it has not all arrived within `timeout` seconds."""
    content_type = request.headers.get("content-type")
    declared = declared_length(request, limit)
    if not (optional and content_type is None and declared in (None, "0")):
        media = (content_type or "").split(";")[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            raise UnsupportedMediaType(
                f"send the body as application/json, not {content_type or 'without a type'}",
                [("content-type", "not application/json")],
            )
    return await read_limited(request, limit, timeout)


def create_app(
    settings: Settings | None = None,
    runtime: ModelRuntime | None = None,
    workers: WorkerGroup | None = None,
) -> FastAPI:
    """The service: loads the configured bundle in the background; ready once it is warm.

    At start it serves the newest version that verifies, and tries again every
    `load_retry_seconds` while none does; shutting down stops the attempts. One of several
    worker processes (`workers`) starts on the version of the group's last reload, if any, and
    follows the reloads the other workers answer.
    """
    settings = settings or Settings()
    metrics = runtime.metrics if runtime and runtime.metrics else ServiceMetrics()
    runtime = runtime or ModelRuntime(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        stop = threading.Event()
        start = runtime.load_at_start if workers is None else partial(workers.follow, runtime)
        loader = threading.Thread(target=start, args=(stop,), name="load", daemon=True)
        if not runtime.ready:
            loader.start()
        yield
        stop.set()
        if app.state.batcher is not None:
            await app.state.batcher.close()
        if loader.is_alive():
            await anyio.to_thread.run_sync(loader.join, STOP_LOADER_SECONDS)

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
    app.state.workers = workers
    admission = Admission(
        settings.max_in_flight,
        settings.max_queued,
        settings.request_deadline_seconds,
        metrics,
        settings.inference_thread_limit(),
        settings.max_expected_wait_ms / 1e3,
    )
    app.state.admission = admission
    app.state.drain = Drain()
    app.state.batcher = (
        Batcher(settings.batch_max_rows, settings.batch_wait_ms / 1e3, metrics)
        if settings.batching
        else None
    )
    metrics.watch_caches(runtime.memo_stats)
    app.router.routes.extend(LEAN_ROUTES)
    app.include_router(router)
    app.include_router(v2_router)
    install_handlers(app)
    app.add_middleware(AdmissionGate, admission=admission)
    app.add_middleware(
        RequestContext,
        metrics=metrics,
        replica=settings.replica,
        access_log=settings.access_log,
        drain=app.state.drain,
    )
    install_openapi(app, runtime, documented.routes)
    return app
