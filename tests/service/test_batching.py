"""Dynamic batching through real server processes: concurrent small requests scored in shared
onnxruntime calls get the answers they get with batching off, each its own; the metrics show the
calls were merged, no call holds more requests than admission lets in, and a SIGTERM finishes
the requests waiting for their call. In-process, with the real session: a merged call that fails
fails only the request that causes it."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.batching import Batcher
from service.metrics import ServiceMetrics
from service.runtime import SCORE, Batch, ModelRuntime
from service.settings import Settings
from tests.service.conftest import CONTEXT, Server, candidate_items, start_server
from training import bundle as bundles

MAX_IN_FLIGHT = 8


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def requests_of_every_kind(bundle: bundles.Bundle) -> list[dict[str, Any]]:
    """Small requests that differ from one another: single rows (some with unseen items or out of
    range prices), rankings of a few candidates, explained, focused on candidates, or not."""
    items = candidate_items(bundle, 40)
    context = {k: v for k, v in CONTEXT.items() if k != "item"}
    bodies: list[dict[str, Any]] = []
    for i, item in enumerate(items[:24]):
        row = {**CONTEXT, "item": item if i % 6 else f"unseen-{i}", "price": 0.25 * i}
        bodies.append({"instances": [row]})
    for i in range(8):
        candidates = [{"item": item} for item in items[24 + 2 * i : 27 + 2 * i]]
        bodies.append({"context": {**context, "price": 1e6 * (i % 2)}, "candidates": candidates})
    for i in range(4):
        bodies.append({"instances": [{**CONTEXT, "item": items[i]}], "explain": True, "top_k": 3})
        bodies.append(
            {
                "context": context,
                "candidates": [{"item": items[i]}, {"item": items[i + 5]}],
                "explain": {"focus": "candidates"},
                "top_k": 2,
            }
        )
    return bodies


async def post_all(server: Server, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as client:
        return list(await asyncio.gather(*(client.post("/predict", json=b) for b in bodies)))


def assert_same_answer(batched: Any, alone: Any, where: str = "answer") -> None:
    """Equal, numbers to 1e-6."""
    if isinstance(alone, dict):
        assert isinstance(batched, dict) and batched.keys() == alone.keys(), where
        for key in alone:
            assert_same_answer(batched[key], alone[key], f"{where}.{key}")
    elif isinstance(alone, list):
        assert isinstance(batched, list) and len(batched) == len(alone), where
        for i, (b, a) in enumerate(zip(batched, alone, strict=True)):
            assert_same_answer(b, a, f"{where}[{i}]")
    elif isinstance(alone, float):
        assert batched == pytest.approx(alone, abs=1e-6), where
    else:
        assert batched == alone, where


def test_concurrent_requests_get_the_answers_of_batching_off_and_calls_are_merged(
    models_dir: Path, tmp_path: Path, servers: list[Server], served_bundle: bundles.Bundle
) -> None:
    common = {"AFM_WORKERS": "1", "AFM_MAX_IN_FLIGHT": str(MAX_IN_FLIGHT)}
    off = start_server(models_dir, tmp_path / "off", AFM_BATCHING="false", **common)
    servers.append(off)
    on = start_server(
        models_dir, tmp_path / "on", AFM_BATCHING="true", AFM_BATCH_WAIT_MS="200", **common
    )
    servers.append(on)
    bodies = requests_of_every_kind(served_bundle)
    bad = {"instances": [{**CONTEXT, "item": 7}]}  # refused before it reaches the batcher
    rows = sum(len(b.get("instances", b.get("candidates", []))) for b in bodies)

    batched = asyncio.run(post_all(on, [*bodies, bad]))
    alone = [httpx.post(f"{off.url}/predict", json=body, timeout=60) for body in bodies]

    for body, b, a in zip(bodies, batched, alone, strict=False):
        assert b.status_code == a.status_code == 200, (body, b.text)
        assert_same_answer(b.json(), a.json())
    assert batched[-1].status_code == 422
    assert [d["field"] for d in batched[-1].json()["error"]["details"]] == ["instances[0].item"]
    unseen = [b.json()["unknown_values"]["item"] for b in batched[:24]]
    assert unseen == [0 if i % 6 else 1 for i in range(24)]  # counts stay each request's own

    calls = metric(on, "afm_inference_rows_count")
    assert metric(on, "afm_inference_rows_sum") == rows
    assert metric(on, "afm_batch_requests_sum") == len(bodies)
    assert calls == metric(on, "afm_batch_requests_count") < len(bodies)
    assert metric(on, f'afm_batch_requests_bucket{{le="{MAX_IN_FLIGHT}.0"}}') == calls
    assert metric(off, "afm_inference_rows_count") == len(bodies)
    assert "afm_batch_requests_count" not in httpx.get(f"{off.url}/metrics").text


def test_large_requests_are_not_batched(
    models_dir: Path, tmp_path: Path, servers: list[Server], served_bundle: bundles.Bundle
) -> None:
    server = start_server(models_dir, tmp_path, AFM_BATCHING="true", AFM_WORKERS="1")
    servers.append(server)
    items = candidate_items(served_bundle, 60)  # AFM_THREADPOOL_MIN_ROWS is 50 in the tests
    answer = httpx.post(
        f"{server.url}/predict",
        json={"context": {k: v for k, v in CONTEXT.items() if k != "item"},
              "candidates": [{"item": i} for i in items]},
        timeout=60,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert metric(server, "afm_inference_rows_sum") == 60
    assert metric(server, "afm_batch_requests_count") == 0


def test_sigterm_finishes_the_requests_waiting_for_their_call(
    models_dir: Path, tmp_path: Path, servers: list[Server], served_bundle: bundles.Bundle
) -> None:
    server = start_server(
        models_dir,
        tmp_path,
        AFM_BATCHING="true",
        AFM_BATCH_WAIT_MS="1000",
        AFM_DRAIN_SECONDS="0",
        AFM_WORKERS="1",
    )
    servers.append(server)
    bodies = [{"instances": [{**CONTEXT, "item": i}]} for i in candidate_items(served_bundle, 6)]
    expected = [a.json()["scores"] for a in asyncio.run(post_all(server, bodies))]

    async def sigterm_while_waiting() -> list[httpx.Response]:
        sent = asyncio.ensure_future(post_all(server, bodies))
        async with httpx.AsyncClient(base_url=server.url) as probe:
            deadline = time.monotonic() + 30
            while await in_flight(probe) < len(bodies):
                assert time.monotonic() < deadline and not sent.done()
                await asyncio.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        return await sent

    answers = asyncio.run(sigterm_while_waiting())
    assert [a.status_code for a in answers] == [200] * len(bodies)
    assert [a.json()["scores"] for a in answers] == expected
    assert server.process.wait(timeout=30) == 0


async def in_flight(probe: httpx.AsyncClient) -> float:
    text = (await probe.get("/metrics")).text
    found = re.search(r"^afm_requests_in_flight (\S+)$", text, re.MULTILINE)
    assert found
    return float(found.group(1))


def test_a_failing_call_reaches_only_the_request_that_causes_it(
    models_dir: Path, served_bundle: bundles.Bundle
) -> None:
    """In-process, with the real bundle and session: the service validates every request before
    inference, so no HTTP request can make a merged call fail; a batch whose index lies beyond
    the embedding table does (onnxruntime refuses the Gather)."""
    model = ModelRuntime(Settings(models_dir=models_dir)).load("synthetic-afm")
    rows = [{**CONTEXT, "item": item} for item in candidate_items(served_bundle, 5)]
    batches = [
        model.encode(model.schemas.parse_predict(orjson.dumps({"instances": [row]})))
        for row in rows
    ]
    broken = Batch(batches[2].index + 10**9, batches[2].value, {}, {}, (), {})
    metrics = ServiceMetrics()

    async def score_together() -> list[Any]:
        batcher = Batcher(max_rows=256, wait_seconds=0.0, metrics=metrics)
        sent = [*batches[:2], broken, *batches[3:]]
        answers = await asyncio.gather(
            *(batcher.run(model, batch, SCORE) for batch in sent), return_exceptions=True
        )
        await batcher.close()
        return answers

    answers = asyncio.run(score_together())
    assert metrics.registry.get_sample_value("afm_batch_requests_count") == 1
    assert metrics.registry.get_sample_value("afm_batch_requests_sum") == 5
    assert isinstance(answers[2], Exception) and "Gather" in str(answers[2])
    for i in (0, 1, 3, 4):
        alone = model.run(batches[i], SCORE)["score"]
        np.testing.assert_allclose(answers[i]["score"], alone, rtol=0, atol=1e-6)
