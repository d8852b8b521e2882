"""The HTTP/1.1 connection: uvicorn's httptools protocol with limits on what a client may send.

- The request line and headers together may take at most `max_header_bytes`; more is a 431,
  whether they arrive in pieces (counted as received, before they are complete) or at once
  (counted as parsed).
- They must arrive within `header_timeout` of the connection opening or of the request's first
  byte; later is a 408.
- Requests the parser refuses are a 400.

Each of these answers in the one error shape, is counted in `afm_requests` (route `(protocol)`)
and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import BadRequest, HeadersTooLarge, RequestTimeout, ServiceError
from service.metrics import ServiceMetrics

log = logging.getLogger("service.api")


class _HeadersOverLimit(Exception):
    """Raised in a parser callback to stop parsing a request whose headers are over the limit."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """httptools parsing, bounded in header size and in time to receive the headers."""

    max_header_bytes = 64 << 10
    header_timeout = 10.0
    metrics: ServiceMetrics | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_bytes = 0
        self.parsed_header_bytes = 0
        self.headers_too_large = False
        self.reading_headers = True
        self.header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.reading_headers:
            self.header_bytes += len(data)
        super().data_received(data)
        if self.reading_headers and self.header_bytes > self.max_header_bytes:
            self.refuse(self._too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.parsed_header_bytes = 0
        if self.header_timer is None:
            self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_parsed(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_parsed(self, size: int) -> None:
        """Headers that arrived whole in one read are only seen here; over the limit, stop the
        parser (uvicorn then calls `send_400_response`, which answers 431)."""
        self.parsed_header_bytes += size
        if self.parsed_header_bytes > self.max_header_bytes:
            self.headers_too_large = True
            raise _HeadersOverLimit

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_headers = True
        self.header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        if self.headers_too_large:
            self.refuse(self._too_large())
        else:
            self.refuse(BadRequest("the request is not valid HTTP/1.1", [("request", msg)]))

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(
            f"the request line and headers are over {self.max_header_bytes} bytes",
            [("headers", f"larger than {self.max_header_bytes} bytes")],
        )

    def refuse(self, error: ServiceError) -> None:
        """Answer `error` in the one error shape, outside any request, and close."""
        self._cancel_header_timer()
        if self.transport.is_closing():
            return
        log.warning("connection refused", extra={"status": error.status_code, "code": error.code})
        if self.metrics is not None:
            self.metrics.count_refused(error.status_code)
        body = orjson.dumps(error.body())
        status = HTTPStatus(error.status_code)
        head = [f"HTTP/1.1 {status.value} {status.phrase}".encode("ascii")]
        head += [name + b": " + value for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json",
            b"content-length: " + str(len(body)).encode("ascii"),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.transport.close()
        self.reading_headers = False

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.reading_headers:
            self.refuse(
                RequestTimeout(
                    f"the request line and headers took over {self.header_timeout:g} s",
                    [("headers", f"not received within {self.header_timeout:g} s")],
                )
            )


def limited_protocol(
    max_header_bytes: int, header_timeout: float, metrics: ServiceMetrics | None = None
) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http` option, with these limits, counting its refusals
    in `metrics`."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "header_timeout": header_timeout,
            "metrics": metrics,
        },
    )
