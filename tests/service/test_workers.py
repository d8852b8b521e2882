"""Several worker processes on one port (`--workers N`), through real server processes: `/readyz`
is 200 once every worker is ready, a reload answered by one worker reaches every worker,
`/metrics` sums every worker's requests and caches, a worker that dies is replaced on the reloaded
version, and one worker is a single process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from pathlib import Path

import httpx

from tests.service.conftest import (
    API_KEY,
    CONTEXT,
    Server,
    copy_models,
    publish_copy,
    start_server,
)

NAME = "synthetic-afm"
FRESH_CONNECTIONS = 24
WAIT_SECONDS = 60.0


# A connection that the kernel gives to a worker being replaced waits until the new worker accepts
# (its socket stays open in the supervisor): hence long client timeouts below, not timed checks.


def workers_of(server: Server) -> set[int]:
    """The supervisor's worker processes (its children but multiprocessing's resource tracker)."""
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = set()
    for child in children:
        with contextlib.suppress(FileNotFoundError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(int(child))
    return workers


def samples(server: Server, name: str) -> dict[str, float]:
    """Every sample of metric `name` in `/metrics`, by its label text."""
    text = httpx.get(f"{server.url}/metrics", timeout=WAIT_SECONDS).text
    found = re.findall(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)
    return {labels: float(value) for labels, value in found}


def answers_by_worker(server: Server) -> dict[str, float]:
    return samples(server, "afm_worker_requests")


def versions_on_fresh_connections(server: Server, route: str = "/readyz") -> list[int]:
    """The model version that each of FRESH_CONNECTIONS requests reports, each on its own
    connection, sent together so that every worker takes some."""

    async def ask() -> list[int]:
        async def one() -> int:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                answer = await http.get(route, headers={"Connection": "close"})
                assert answer.status_code == 200, answer.text
                body = answer.json()
                version: int = body["model"]["version"] if route == "/readyz" else body["version"]
                return version

        return list(await asyncio.gather(*(one() for _ in range(FRESH_CONNECTIONS))))

    return asyncio.run(ask())


def wait_until(condition: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS:g} s: {what}"
        time.sleep(0.1)


def test_a_reload_answered_by_one_worker_reaches_every_worker(
    models_dir: Path, tmp_path: Path
) -> None:
    copy = copy_models(models_dir, tmp_path / "models")
    server = start_server(copy, tmp_path, "--workers", "2")
    try:
        assert len(workers_of(server)) == 2
        assert versions_on_fresh_connections(server) == [1] * FRESH_CONNECTIONS, "all are ready"
        assert len(answers_by_worker(server)) == 2

        publish_copy(copy, NAME, 2)
        reload = httpx.post(
            f"{server.url}/admin/reload", headers={"X-API-Key": API_KEY}, timeout=WAIT_SECONDS
        )
        assert reload.status_code == 200, reload.text
        assert reload.json()["model"] == {"name": NAME, "version": 2}

        assert versions_on_fresh_connections(server) == [2] * FRESH_CONNECTIONS
        assert versions_on_fresh_connections(server, "/model") == [2] * FRESH_CONNECTIONS
        info = samples(server, "afm_model_info")
        assert info[f'{{name="{NAME}",task="ctr",version="2"}}'] == 1.0
        assert info[f'{{name="{NAME}",task="ctr",version="1"}}'] == 0.0, "a worker serves 1"
        assert samples(server, "afm_model_reloads_total")['{result="loaded"}'] == 4.0

        victim = min(workers_of(server))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: victim not in workers_of(server) and len(workers_of(server)) == 2,
                   "the supervisor replaces the killed worker")  # fmt: skip
        replacement = (workers_of(server) - {victim}).pop()
        wait_until(
            lambda: (
                f'{{pid="{replacement}"}}' in answers_by_worker(server)
                and samples(server, "afm_ready")[""] == 1.0
            ),
            "the new worker is ready",
        )
        assert f'{{pid="{victim}"}}' not in answers_by_worker(server)
        assert versions_on_fresh_connections(server) == [2] * FRESH_CONNECTIONS
        assert samples(server, "afm_model_info")[f'{{name="{NAME}",task="ctr",version="1"}}'] == 0
    finally:
        server.running.stop()
    assert server.process.returncode == 0


def test_metrics_count_the_requests_and_cache_lookups_of_every_worker(
    models_dir: Path, tmp_path: Path
) -> None:
    server = start_server(models_dir, tmp_path, "--workers", "2")
    body = {"context": CONTEXT, "candidates": [{"item": "1"}, {"item": "2"}]}

    async def burst(requests: int) -> None:
        async def one() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
                answer = await http.post("/predict", json=body)
                assert answer.status_code == 200, answer.text

        await asyncio.gather(*(one() for _ in range(requests)))

    try:
        wait_until(lambda: len(answers_by_worker(server)) == 2, "both workers write metrics")
        sent = 0
        for _ in range(20):
            asyncio.run(burst(16))
            sent += 16
            if all(count > 0 for count in answers_by_worker(server).values()):
                break
        by_worker = answers_by_worker(server)
        assert len(by_worker) == 2 and all(count > 0 for count in by_worker.values()), by_worker

        route = '{method="POST",route="/predict",status="200"}'
        assert samples(server, "afm_requests_total")[route] == sent
        assert samples(server, "afm_request_duration_seconds_count")['{route="/predict"}'] == sent
        assert samples(server, "afm_inference_rows_sum")[""] == 2 * sent
        lookups = samples(server, "afm_cache_lookups_total")
        values = (
            lookups['{cache="values",result="hit"}'] + lookups['{cache="values",result="miss"}']
        )
        assert values == len(CONTEXT) * sent
        assert lookups['{cache="values",result="miss"}'] <= 2 * len(CONTEXT)
        entries = samples(server, "afm_cache_entries")['{cache="values"}']
        assert len(CONTEXT) <= entries <= 2 * len(CONTEXT)
    finally:
        server.running.stop()


def test_connections_opened_together_are_spread_over_the_workers(
    models_dir: Path, tmp_path: Path
) -> None:
    server = start_server(models_dir, tmp_path, "--workers", "2")
    host, port = server.url.removeprefix("http://").split(":")

    async def open_then_ask(connections: int) -> None:
        opened = [await asyncio.open_connection(host, int(port)) for _ in range(connections)]
        for _, writer in opened:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        for reader, writer in opened:
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.close()

    try:
        before = answers_by_worker(server)
        asyncio.run(open_then_ask(16))
        after = answers_by_worker(server)
        served = {pid: after[pid] - before.get(pid, 0) for pid in after}
        assert len(served) == 2 and all(count >= 1 for count in served.values()), served
    finally:
        server.running.stop()


def test_one_worker_is_a_single_process(models_dir: Path, tmp_path: Path) -> None:
    server = start_server(models_dir, tmp_path, "--workers", "1")
    try:
        assert workers_of(server) == set()
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert "afm_worker_requests" not in text
        assert re.search(
            r'^afm_model_info\{name="synthetic-afm",task="ctr",version="1"\} 1\.0$', text, re.M
        )
        assert not any("parent process" in line.get("message", "") for line in server.logs())
    finally:
        server.running.stop()
