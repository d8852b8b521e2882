"""Peer 4 of the serving benchmark: BentoML serving the bundle's ONNX graph with onnxruntime.

BentoML (https://github.com/bentoml/BentoML) runs in a virtual environment of its own
(`benchmarks/.envs/bentoml`, made by `ensure_env` (benchmarks/peers/envs.py) from PyPI at the pinned versions below), so that
its dependencies stay out of the project's. The service is what BentoML's documentation shows: a
`@bentoml.service` class that opens one onnxruntime session, and one `@bentoml.api` method whose
parameters are the request's JSON fields (`context`, `candidates`) and whose answer is
`{"scores": [...]}`. The rows are encoded with the bundle's own encoder (the project on
`sys.path`; it needs numpy, pydantic and xxhash, not torch).

    AFM_BUNDLE=benchmarks/results/models/bench-afm/1 benchmarks/.envs/bentoml/bin/python -m \
        bentoml serve benchmarks.peers.bentoml_service:AFM --port 8003

One API worker (`workers=1`), AFM_INTRA_OP_THREADS onnxruntime threads (default 1): the benchmark
pins every server to one CPU. Usage tracking is off (BENTOML_DO_NOT_TRACK, set by the benchmark).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.peers import envs

ROOT = Path(__file__).resolve().parents[2]

PACKAGES = ["bentoml==1.4.40", "onnxruntime==1.31.1", "numpy==2.4.6", "xxhash==4.1.0"]


def ensure_env() -> Path:
    """BentoML's interpreter, installing its environment from PyPI on first use."""
    return envs.ensure_env("bentoml", PACKAGES)


def serve_command(port: int, host: str) -> list[str]:
    """`bentoml serve` of this module's service in BentoML's environment."""
    return [
        str(envs.python_of("bentoml")), "-m", "bentoml", "serve", "benchmarks.peers.bentoml_service:AFM",
        "--host", host, "--port", str(port),
    ]  # fmt: skip


try:
    import bentoml
except ImportError:  # the project's environment: only ensure_env and serve_command are used
    bentoml = None

if bentoml is not None:
    sys.path.insert(0, str(ROOT))
    from training import bundle as bundles

    Value = str | float

    @bentoml.service(workers=1, traffic={"timeout": 60})
    class AFM:
        def __init__(self) -> None:
            path = Path(os.environ.get("AFM_BUNDLE", "benchmarks/results/models/bench-afm/1"))
            threads = int(os.environ.get("AFM_INTRA_OP_THREADS", "1"))
            bundle = bundles.read(path)
            self.encoder = bundle.encoder
            self.session = bundle.session(bundles.session_options(intra_op_threads=threads))

        @bentoml.api  # type: ignore[untyped-decorator]  # bentoml is not installed here
        def predict(
            self, context: dict[str, Value], candidates: list[dict[str, Value]]
        ) -> dict[str, Any]:
            rows = [{**context, **candidate} for candidate in candidates]
            names = self.encoder.names
            encoded = self.encoder.encode({name: [row[name] for row in rows] for name in names})
            feeds = {"feature_index": encoded.index, "feature_value": encoded.value}
            (scores,) = self.session.run(["score"], feeds)
            return {"scores": scores.tolist()}
