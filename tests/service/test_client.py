"""The client against a dead server: `ready()` is False, and calls are tried again with backoff
(its retries on a 503 with Retry-After are tested against a real server in test_startup)."""

from __future__ import annotations

import httpx
import pytest

from service.client import AFMClient
from service.process import HOST, free_port


class Counting(httpx.HTTPTransport):
    """An httpx transport that records the path of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


def test_ready_is_false_when_nothing_listens_and_calls_are_tried_again() -> None:
    transport = Counting()
    with AFMClient(
        f"http://{HOST}:{free_port()}", retries=2, backoff=0.01, transport=transport
    ) as dead:
        assert dead.ready() is False
        assert transport.paths == ["/readyz"]
        with pytest.raises(httpx.ConnectError):
            dead.model()
    assert transport.paths == ["/readyz", "/model", "/model", "/model"]


def test_no_retries_asks_once() -> None:
    transport = Counting()
    dead = AFMClient(f"http://{HOST}:{free_port()}", retries=0, transport=transport)
    with dead, pytest.raises(httpx.ConnectError):
        dead.health()
    assert transport.paths == ["/healthz"]
