"""Peer 2 of the serving benchmark: the AFM served the way a tutorial would write it.

A FastAPI app whose request is a pydantic model with one model object per candidate, scored with
the bundle's PyTorch checkpoint in eager mode, and answered through FastAPI's default JSON response.
It is a yardstick, not a service: no limits, no errors of its own, no metrics.

    AFM_BUNDLE=benchmarks/results/models/bench-afm/1 \
        python -m uvicorn benchmarks.peers.tutorial_service:app --port 8001 --no-access-log

The only concession to fairness is `torch.set_num_threads` (AFM_INTRA_OP_THREADS, default 1): the
benchmark pins every server to one CPU, where more threads only fight each other.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from pydantic import BaseModel, create_model

from training import bundle as bundles
from training.export import load_checkpoint

BUNDLE = Path(os.environ.get("AFM_BUNDLE", "benchmarks/results/models/bench-afm/1"))
torch.set_num_threads(int(os.environ.get("AFM_INTRA_OP_THREADS", "1")))

bundle = bundles.read(BUNDLE)
encoder = bundle.encoder
model = load_checkpoint(BUNDLE).eval()
task = bundle.task


def _type(kind: str) -> Any:
    return (str | None, None) if kind == "categorical" else (float | None, None)


# What a tutorial writes by hand, one attribute per column; generated here from the bundle.
Row: Any = create_model("Row", **{f.name: _type(f.kind) for f in encoder.fields})


class PredictRequest(BaseModel):
    context: Row
    candidates: list[Row]


class PredictResponse(BaseModel):
    scores: list[float]


app = FastAPI(title="AFM, the tutorial way")


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready"}


@app.post("/predict", response_model=PredictResponse)
def predict(request: PredictRequest) -> PredictResponse:
    context = request.context.model_dump(exclude_none=True)
    rows = [{**context, **c.model_dump(exclude_none=True)} for c in request.candidates]
    columns = {name: [row[name] for row in rows] for name in encoder.names}
    encoded = encoder.encode(columns)
    with torch.no_grad():
        raw = model(torch.from_numpy(encoded.index), torch.from_numpy(encoded.value)).raw
        scores = torch.sigmoid(raw) if task == "ctr" else raw
    return PredictResponse(scores=scores.tolist())
