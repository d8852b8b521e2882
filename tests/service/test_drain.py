"""Graceful shutdown through a real process: SIGTERM drains first (readiness 503, requests still
served with `Connection: close`), then the process stops and exits 0. The same with two worker
processes under the supervisor, which passes the signal on to each."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import CONTEXT, start_server, stop_server

DRAIN_SECONDS = 4.0

pytestmark = pytest.mark.parametrize("workers", ["1", "2"])


def test_sigterm_drops_readiness_keeps_serving_then_exits_cleanly(
    models_dir: Path, tmp_path: Path, workers: str
) -> None:
    server = start_server(
        models_dir, tmp_path, "--workers", workers, AFM_DRAIN_SECONDS=str(DRAIN_SECONDS)
    )
    try:
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_SECONDS
        ready = httpx.get(f"{server.url}/readyz")
        while ready.status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
        assert "draining" in ready.json()["error"]["message"]

        answer = httpx.post(f"{server.url}/predict", json={"instances": [CONTEXT | {"item": "1"}]})
        assert answer.status_code == 200, answer.text
        assert answer.headers["connection"] == "close"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert server.process.poll() is None

        assert server.process.wait(timeout=DRAIN_SECONDS + 20) == 0
        logs = server.logs()
        assert sum(line.get("message") == "draining" for line in logs) == int(workers)
    finally:
        stop_server(server)


def test_sigint_stops_without_draining(models_dir: Path, tmp_path: Path, workers: str) -> None:
    server = start_server(models_dir, tmp_path, "--workers", workers, AFM_DRAIN_SECONDS="600")
    try:
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=30) == 0
    finally:
        stop_server(server)


def test_shutdown_finishes_the_requests_a_connection_has_sent(
    models_dir: Path, tmp_path: Path, workers: str
) -> None:
    server = start_server(
        models_dir,
        tmp_path,
        "--workers",
        workers,
        AFM_DRAIN_SECONDS="0",
        AFM_AUTH_FAILURE_DELAY_SECONDS="2",
    )
    try:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as raw:
            slow = b"POST /admin/reload HTTP/1.1\r\nHost: x\r\nX-API-Key: wrong\r\n\r\n"
            raw.sendall(slow + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            answers = b""
            while chunk := raw.recv(65536):
                answers += chunk
        assert answers.startswith(b"HTTP/1.1 401 ")
        assert answers.count(b"HTTP/1.1 200 OK") == 1 and answers.endswith(b'{"status":"ok"}')
        assert server.process.wait(timeout=30) == 0
    finally:
        stop_server(server)
