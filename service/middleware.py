"""The ASGI middleware around every request: request id, replica header, metrics, access log,
and `Connection: close` while the server drains before shutdown."""

from __future__ import annotations

import logging
import re
import time
import uuid

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.drain import Drain
from service.errors import error_body
from service.logging_config import request_id
from service.metrics import ServiceMetrics

log = logging.getLogger("service.api")

REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class RequestContext:
    """Per request: X-Request-ID (honoured or made), X-Served-By, metrics, access log, last 500;
    while draining, `Connection: close`."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        replica: str,
        access_log: bool,
        drain: Drain | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.replica = replica.encode("latin-1", "replace")
        self.access_log = access_log
        self.drain = drain or Drain()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        token = request_id.set(rid)
        start = time.perf_counter()
        status, started = 500, False
        extra = [(b"x-request-id", rid.encode()), (b"x-served-by", self.replica)]
        if self.drain.draining:
            extra.append((b"connection", b"close"))

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


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token, else a new random id."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given: str = value.decode("latin-1")
            if REQUEST_ID.fullmatch(given):
                return given
            break
    return uuid.uuid4().hex
