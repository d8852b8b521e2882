"""Reading a request body within a size and a time limit, for the own API and the V2 routes."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from service.errors import BadRequest, PayloadTooLarge, RequestTimeout


def declared_length(request: Request, limit: int) -> str | None:
    """The Content-Length header as sent: 400 unless ASCII digits, 413 beyond `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()):
        raise BadRequest("Content-Length is not a number", [("content-length", "not a number")])
    if int(declared) > limit:
        raise PayloadTooLarge(
            f"the body is {declared} bytes, the limit is {limit}",
            [("body", f"larger than {limit} bytes")],
        )
    return declared


async def read_limited(request: Request, limit: int, timeout: float | None) -> bytes:
    """The whole body: 413 beyond `limit` bytes, 408 when it has not all arrived within `timeout`
    seconds (None: no deadline)."""
    chunks, size = [], 0
    try:
        # asyncio's timeout rather than anyio's cancel scope: the same deadline at a fraction of
        # the per-request cost
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the body is over {limit} bytes", [("body", f"larger than {limit} bytes")]
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"the body did not arrive within {timeout:g} s",
            [("body", f"not received within {timeout:g} s")],
        ) from None
    return b"".join(chunks)
