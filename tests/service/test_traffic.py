"""The service under production traffic: admission control, limits on slow or huge requests, the
error shape of connection-level refusals, slowed-down wrong admin keys. Through real processes."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import API_KEY, CONTEXT, Server, start_server, stop_server

ROWS = 1000
LIMITED_ENV = {
    "AFM_MAX_IN_FLIGHT": "1",
    "AFM_MAX_QUEUED": "0",
    "AFM_MAX_EXPECTED_WAIT_MS": "0",
    "AFM_MAX_CANDIDATES": str(ROWS),
    "AFM_MAX_BODY_BYTES": str(1 << 20),
    "AFM_MAX_HEADER_BYTES": "4096",
    "AFM_HEADER_TIMEOUT_SECONDS": "1",
    "AFM_BODY_TIMEOUT_SECONDS": "1",
    "AFM_AUTH_FAILURE_DELAY_SECONDS": "2",
}


@pytest.fixture(scope="module")
def limited(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with one place for inference, no queue, and small header and time limits."""
    running = start_server(models_dir, tmp_path_factory.mktemp("limited"), **LIMITED_ENV)
    try:
        yield running
    finally:
        stop_server(running)


def slow_body() -> dict[str, Any]:
    """A request slow enough to be in flight while others arrive: many rows, all explained."""
    return {
        "context": CONTEXT,
        "candidates": [{"item": str(i)} for i in range(ROWS)],
        "explain": True,
        "top_k": 3,
    }


async def burst(url: str, requests: int) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """`requests` slow predictions fired at once, and `/healthz` asked while they run."""
    limits = httpx.Limits(max_connections=requests + 5)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        body = slow_body()
        predictions = [
            asyncio.create_task(http.post("/predict", json=body)) for _ in range(requests)
        ]
        await asyncio.sleep(0)
        probes = [await http.get("/healthz", timeout=5) for _ in range(3)]
        return list(await asyncio.gather(*predictions)), probes


def assert_overloaded(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    error = response.json()["error"]
    assert error["code"] == "overloaded"
    assert error["message"] and error["details"][0]["field"] == "request"


def metric(server_url: str, name: str) -> float:
    text = httpx.get(f"{server_url}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_requests_beyond_the_limit_get_a_fast_503_while_healthz_answers(limited: Server) -> None:
    rejected_before = metric(limited.url, 'afm_admission_total{result="rejected"}')
    responses, probes = asyncio.run(burst(limited.url, 24))
    statuses = [r.status_code for r in responses]
    assert 200 in statuses and 503 in statuses, statuses
    assert set(statuses) == {200, 503}
    for response in responses:
        if response.status_code == 503:
            assert_overloaded(response)
        else:
            assert len(response.json()["scores"]) == ROWS
    assert [p.status_code for p in probes] == [200, 200, 200]
    rejected = metric(limited.url, 'afm_admission_total{result="rejected"}') - rejected_before
    assert rejected == statuses.count(503)
    assert metric(limited.url, 'afm_admission_total{result="admitted"}') >= statuses.count(200)


def test_requests_expected_to_wait_past_the_budget_get_a_503_and_one_alone_is_served(
    models_dir: Path, tmp_path: Path
) -> None:
    env = {
        **LIMITED_ENV,
        "AFM_MAX_IN_FLIGHT": "32",
        "AFM_MAX_QUEUED": "128",
        "AFM_MAX_EXPECTED_WAIT_MS": "1",
    }
    server = start_server(models_dir, tmp_path, **env)
    try:
        alone = httpx.post(f"{server.url}/predict", json=slow_body(), timeout=60)
        assert alone.status_code == 200  # measures the time per request: far over 1 ms
        responses, probes = asyncio.run(burst(server.url, 12))
        refused = [r for r in responses if r.status_code == 503]
        assert refused and {r.status_code for r in responses} == {200, 503}
        for response in refused:
            assert_overloaded(response)
            assert response.json()["error"]["details"][0]["problem"] == ("expected wait over 1 ms")
        assert metric(server.url, 'afm_admission_total{result="rejected"}') == len(refused)
        assert [p.status_code for p in probes] == [200, 200, 200]
        after = httpx.post(f"{server.url}/predict", json=slow_body(), timeout=60)
        assert after.status_code == 200  # nothing ahead of it: no wait to refuse it for
    finally:
        stop_server(server)


def test_queued_requests_past_their_deadline_are_dropped_not_computed(
    models_dir: Path, tmp_path: Path
) -> None:
    env = {**LIMITED_ENV, "AFM_MAX_QUEUED": "100", "AFM_REQUEST_DEADLINE_SECONDS": "0.001"}
    server = start_server(models_dir, tmp_path, **env)
    try:
        responses, probes = asyncio.run(burst(server.url, 12))
        expired = [r for r in responses if r.status_code == 503]
        assert expired and {r.status_code for r in responses} <= {200, 503}
        for response in expired:
            assert_overloaded(response)
            assert "deadline" in response.json()["error"]["message"]
        assert metric(server.url, 'afm_admission_total{result="expired"}') == len(expired)
        assert metric(server.url, 'afm_admission_total{result="rejected"}') == 0
        assert [p.status_code for p in probes] == [200, 200, 200]
    finally:
        stop_server(server)


def exchange(url: str, data: bytes, wait: float = 20.0) -> tuple[int, dict[str, Any], bytes]:
    """Send raw bytes, read until the server closes: the status, the JSON error, the raw answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as raw:
        raw.sendall(data)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    assert b"content-type: application/json" in head.lower()
    return status, httpx.Response(status, content=body).json(), answer


def test_an_over_large_header_is_a_431_and_others_are_served(limited: Server) -> None:
    host, port = limited.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as huge:
        huge.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
        assert httpx.get(f"{limited.url}/healthz").status_code == 200
        answer = b""
        while chunk := huge.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")
    error = httpx.Response(431, content=answer.partition(b"\r\n\r\n")[2]).json()["error"]
    assert error["code"] == "headers_too_large"
    assert error["details"] == [{"field": "headers", "problem": "larger than 4096 bytes"}]


def test_headers_that_never_finish_get_a_408_and_the_connection_closes(limited: Server) -> None:
    status, body, _ = exchange(limited.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    assert body["error"]["details"][0]["field"] == "headers"


def test_a_body_that_stalls_gets_a_408_and_the_connection_closes(limited: Server) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    status, body, raw = exchange(limited.url, head + b'{"instances": [')
    assert status == 408
    assert body["error"]["code"] == "request_timeout"
    assert body["error"]["details"] == [{"field": "body", "problem": "not received within 1 s"}]
    assert b"connection: close" in raw.lower()
    assert httpx.post(f"{limited.url}/predict", json={"instances": [CONTEXT]}).status_code in (
        200,
        422,
    )


def test_a_request_that_is_not_http_is_a_400_in_the_error_shape(limited: Server) -> None:
    status, body, _ = exchange(limited.url, b"NOT HTTP AT ALL\r\n\r\n")
    assert status == 400
    assert body["error"]["code"] == "bad_request"
    assert body["error"]["message"] == "the request is not valid HTTP/1.1"


def test_a_wrong_admin_key_is_answered_late_without_blocking_others(limited: Server) -> None:
    async def run() -> tuple[httpx.Response, float, bool]:
        async with httpx.AsyncClient(base_url=limited.url, timeout=30) as http:
            start = time.monotonic()
            reload = asyncio.create_task(
                http.post("/admin/reload", headers={"X-API-Key": API_KEY + "-wrong"})
            )
            await asyncio.sleep(0.1)
            assert (await http.get("/healthz")).status_code == 200
            pending_after_probe = not reload.done()
            answer = await reload
            return answer, time.monotonic() - start, pending_after_probe

    answer, seconds, pending_after_probe = asyncio.run(run())
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert seconds >= 2.0
    assert pending_after_probe


def test_answers_sent_before_any_route_are_counted_in_metrics(limited: Server) -> None:
    def refused(status: int) -> float:
        return metric(
            limited.url, f'afm_requests_total{{method="-",route="(protocol)",status="{status}"}}'
        )

    before = {status: refused(status) for status in (400, 408, 431)}
    assert exchange(limited.url, b"NOT HTTP AT ALL\r\n\r\n")[0] == 400
    assert exchange(limited.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")[0] == 408
    too_large = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192 + b"\r\n\r\n"
    assert exchange(limited.url, too_large)[0] == 431
    assert {status: refused(status) - before[status] for status in before} == {
        400: 1,
        408: 1,
        431: 1,
    }
