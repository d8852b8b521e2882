"""The client against a dead server: `ready()` is False, and calls are tried again with backoff
(its retries on a 503 with Retry-After are tested against a real server in test_startup); and
`explain` as a flag or as options against the real server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from service.client import AFMClient, AFMError
from service.process import HOST, free_port
from tests.service.conftest import CONTEXT, Server, candidate_items
from training import bundle as bundles


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


def test_rank_takes_explain_as_a_flag_or_as_options(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    """`explain=True` and `{"focus": "rows"}` give each row's top pairs; `{"focus":
    "candidates"}` gives per candidate what separates it from the best one."""
    candidates = [{"item": item} for item in candidate_items(served_bundle, 3)]
    with AFMClient(server.url) as afm:
        plain = afm.rank(CONTEXT, candidates)
        flag = afm.rank(CONTEXT, candidates, explain=True, top_k=2)
        rows = afm.rank(CONTEXT, candidates, explain={"focus": "rows"}, top_k=2)
        focused = afm.rank(CONTEXT, candidates, explain={"focus": "candidates"}, top_k=2)
        with pytest.raises(AFMError) as refused:
            afm.predict([{**CONTEXT, **candidates[0]}], explain={"focus": "candidates"})
    assert "explanations" not in plain or plain.get("explanations") is None
    assert flag["explanations"] == rows["explanations"]
    assert all("versus_best" not in e for e in flag["explanations"])
    assert focused["scores"] == plain["scores"]
    best = int(np.argmax(plain["scores"]))
    for explanation in focused["explanations"]:
        assert "versus_best" in explanation
        assert explanation["versus_best"]["candidate"] == best  # type: ignore[typeddict-item]
    assert refused.value.status_code == 422
    assert "explain.focus" in refused.value.fields
