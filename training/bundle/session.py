"""The onnxruntime session on a bundle's graph: the only place either side opens one."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from training.bundle.errors import BundleError
from training.bundle.manifest import IOSignature

ORT_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """Options for small, latency-bound batches on few cores (0 threads: one per core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    return options


def open_session(
    graph: Path, declared: IOSignature, options: ort.SessionOptions | None = None
) -> ort.InferenceSession:
    """A CPU session on the graph, refused if its inputs and outputs differ from `declared`."""
    folder = graph.parent
    try:
        session = ort.InferenceSession(
            str(graph), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # onnxruntime raises its own types for corrupt graphs
        raise BundleError(folder, f"{graph.name} does not load: {error}") from error
    for kind, nodes in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        want = getattr(declared, kind)
        actual = {n.name: n for n in nodes}
        if list(actual) != list(want):
            raise BundleError(
                folder, f"graph {kind} {list(actual)} differ from bundle.json {list(want)}"
            )
        for name, node in actual.items():
            spec = want[name]
            dtype = ORT_TYPES.get(node.type, node.type)
            shape = [d if isinstance(d, int) else "batch" for d in node.shape]
            if dtype != spec.dtype or shape != spec.shape:
                raise BundleError(
                    folder,
                    f"graph {kind[:-1]} {name!r} is {dtype}{shape},"
                    f" bundle.json says {spec.dtype}{spec.shape}",
                )
    return session
