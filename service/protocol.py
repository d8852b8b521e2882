"""The HTTP/1.1 connection: uvicorn's httptools protocol with limits on what a client may send.

- The request line and headers together may take at most `max_header_bytes`; more is a 431.
- They must arrive within `header_timeout` of the connection opening or of the request's first
  byte; later is a 408.
- Requests the parser refuses are a 400.

Each of these answers in the one error shape and closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.errors import BadRequest, HeadersTooLarge, RequestTimeout, ServiceError

log = logging.getLogger("service.api")


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """httptools parsing, bounded in header size and in time to receive the headers."""

    max_header_bytes = 64 << 10
    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_bytes = 0
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
            self.refuse(
                HeadersTooLarge(
                    f"the request line and headers are over {self.max_header_bytes} bytes",
                    [("headers", f"larger than {self.max_header_bytes} bytes")],
                )
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self.reading_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.reading_headers = True
        self.header_bytes = 0

    def send_400_response(self, msg: str) -> None:
        self.refuse(BadRequest("the request is not valid HTTP/1.1", [("request", msg)]))

    def refuse(self, error: ServiceError) -> None:
        """Answer `error` in the one error shape, outside any request, and close."""
        self._cancel_header_timer()
        if self.transport.is_closing():
            return
        log.warning("connection refused", extra={"status": error.status_code, "code": error.code})
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


def limited_protocol(max_header_bytes: int, header_timeout: float) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's `http` option, with these limits."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes, "header_timeout": header_timeout},
    )
