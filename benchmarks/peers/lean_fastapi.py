"""Peer 3 of the serving benchmark: a lean, hand-written FastAPI + onnxruntime service.

What a competent engineer writes in about sixty lines to serve the bundle: one pydantic model for
the ranking request, one onnxruntime session, one route, FastAPI's defaults for everything else
(a plain `def` route, which FastAPI runs in its thread pool; the response validated and written by
FastAPI). No limits, error shapes, metrics or explanations: a yardstick for what the service's
extras and its request path cost or save.

    AFM_BUNDLE=benchmarks/results/models/bench-afm/1 \
        python -m uvicorn benchmarks.peers.lean_fastapi:app --port 8002 --no-access-log

The session has the service's options with AFM_INTRA_OP_THREADS threads (default 1), so that both
run the same graph the same way; the bundle's encoder turns the rows into the graph's inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel

from training import bundle as bundles

BUNDLE = Path(os.environ.get("AFM_BUNDLE", "benchmarks/results/models/bench-afm/1"))
THREADS = int(os.environ.get("AFM_INTRA_OP_THREADS", "1"))

bundle = bundles.read(BUNDLE)
encoder = bundle.encoder
session = bundle.session(bundles.session_options(intra_op_threads=THREADS))

Value = str | float


class RankRequest(BaseModel):
    context: dict[str, Value]
    candidates: list[dict[str, Value]]


class RankResponse(BaseModel):
    scores: list[float]


app = FastAPI(title="AFM, lean")


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict")
def predict(request: RankRequest) -> RankResponse:
    rows = [{**request.context, **candidate} for candidate in request.candidates]
    encoded = encoder.encode({name: [row[name] for row in rows] for name in encoder.names})
    feeds = {"feature_index": encoded.index, "feature_value": encoded.value}
    (scores,) = session.run(["score"], feeds)
    return RankResponse(scores=scores.tolist())
