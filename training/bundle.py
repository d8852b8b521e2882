"""The model bundle (DESIGN.md, contract 1): writer for training, verified reader for the service.

    models/<name>/<version>/model.onnx + bundle.json (+ checkpoint.pt, plots)

Torch-free: the service imports this module and onnxruntime, nothing of PyTorch.
A bundle is published atomically (staged in a hidden sibling folder, then renamed to the next
version), and read back only when every check passes: format version, files present, the graph's
sha256, and the graph's inputs and outputs against what bundle.json declares.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from training.features import FeatureEncoder

FORMAT_VERSION = 1
MANIFEST = "bundle.json"
GRAPH = "model.onnx"
INPUTS = ("feature_index", "feature_value")
OUTPUTS = ("score", "raw", "attention", "pair_contribution", "linear_contribution")
ORT_TYPES = {"tensor(int64)": "int64", "tensor(float)": "float32"}


class BundleError(Exception):
    """A bundle that must not be served; the message names the cause."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def io_signature(num_fields: int, num_pairs: int) -> dict[str, dict[str, dict[str, Any]]]:
    """The graph's I/O as bundle.json declares it; `batch` is the dynamic axis."""
    return {
        "inputs": {
            "feature_index": {"dtype": "int64", "shape": ["batch", num_fields]},
            "feature_value": {"dtype": "float32", "shape": ["batch", num_fields]},
        },
        "outputs": {
            "score": {"dtype": "float32", "shape": ["batch"]},
            "raw": {"dtype": "float32", "shape": ["batch"]},
            "attention": {"dtype": "float32", "shape": ["batch", num_pairs]},
            "pair_contribution": {"dtype": "float32", "shape": ["batch", num_pairs]},
            "linear_contribution": {"dtype": "float32", "shape": ["batch", num_fields]},
        },
    }


@dataclass
class Bundle:
    """A verified bundle on disk: its manifest and the feature encoding it was trained with."""

    path: Path
    manifest: dict[str, Any]
    encoder: FeatureEncoder

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def task(self) -> str:
        return str(self.manifest["task"])

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b in self.manifest["pairs"]]

    @property
    def bias(self) -> float:
        return float(self.manifest["bias"])

    @property
    def graph_path(self) -> Path:
        return self.path / GRAPH

    def session(self, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
        """An onnxruntime session on the graph, refused if its I/O disagrees with bundle.json."""
        try:
            session = ort.InferenceSession(
                str(self.graph_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own types for corrupt graphs
            raise BundleError(self.path, f"model.onnx does not load: {error}") from error
        _check_io(self.path, session, self.manifest["io"])
        return session

    def score(self, columns: Mapping[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
        """The graph's `score` output (after the link) for raw feature columns, in batches."""
        return self.run(columns, ["score"], batch_size)["score"]

    def run(
        self, columns: Mapping[str, np.ndarray], outputs: list[str], batch_size: int = 8192
    ) -> dict[str, np.ndarray]:
        """The named graph outputs (`score`, `attention`, ...) for raw feature columns."""
        encoded = self.encoder.encode(columns)
        session = self.session()
        batches = [
            session.run(outputs, {"feature_index": encoded.index[s : s + batch_size], "feature_value": encoded.value[s : s + batch_size]})
            for s in range(0, len(encoded.index), batch_size)
        ]  # fmt: skip
        return {name: np.concatenate([b[i] for b in batches]) for i, name in enumerate(outputs)}


def read(path: Path | str) -> Bundle:
    """Read and verify a bundle folder; raises BundleError naming the first problem found."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(path, f"{MANIFEST} is missing (not a bundle, or half-written)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(path, f"{MANIFEST} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        found = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise BundleError(
            path, f"unknown format version {found!r} (this reader knows {FORMAT_VERSION})"
        )
    for key in ("name", "version", "task", "link", "fields", "pairs", "io", "sha256", "bias"):
        if key not in manifest:
            raise BundleError(path, f"{MANIFEST} lacks {key!r}")
    graph = path / GRAPH
    if not graph.is_file():
        raise BundleError(path, f"{GRAPH} is missing")
    if (digest := sha256_file(graph)) != manifest["sha256"]:
        raise BundleError(
            path,
            f"checksum mismatch: {GRAPH} has sha256 {digest}, bundle.json says {manifest['sha256']}",
        )
    encoder = FeatureEncoder.from_dict(manifest)
    expected = io_signature(len(encoder.fields), len(manifest["pairs"]))
    if manifest["io"] != expected:
        raise BundleError(
            path, "the declared I/O does not match the fields and pairs of bundle.json"
        )
    return Bundle(path, manifest, encoder)


def _check_io(path: Path, session: ort.InferenceSession, declared: Mapping[str, Any]) -> None:
    for kind, nodes in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        actual = {n.name: n for n in nodes}
        if list(actual) != list(declared[kind]):
            raise BundleError(
                path, f"graph {kind} {list(actual)} differ from bundle.json {list(declared[kind])}"
            )
        for name, node in actual.items():
            want = declared[kind][name]
            dtype = ORT_TYPES.get(node.type, node.type)
            shape = [d if isinstance(d, int) else "batch" for d in node.shape]
            if dtype != want["dtype"] or shape != want["shape"]:
                raise BundleError(
                    path,
                    f"graph {kind[:-1]} {name!r} is {dtype}{shape}, bundle.json says {want['dtype']}{want['shape']}",
                )


def resolve(models_dir: Path | str, name: str | None = None, version: int | None = None) -> Path:
    """The folder of a bundle: the given or highest version of `name`; without a name, the
    most recently published bundle of any model."""
    models_dir = Path(models_dir)
    if name is None:
        names = (
            [
                p
                for p in models_dir.iterdir()
                if p.is_dir() and not p.name.startswith(".") and versions(p)
            ]
            if models_dir.is_dir()
            else []
        )
        if not names:
            raise BundleError(models_dir, "no bundle found")
        latest = [p / str(max(versions(p))) for p in names]
        return max(latest, key=lambda p: p.stat().st_mtime)
    model_dir = models_dir / name
    available = versions(model_dir)
    if not available:
        raise BundleError(model_dir, f"no bundle of model {name!r}")
    if version is None:
        return model_dir / str(max(available))
    if version not in available:
        raise BundleError(
            model_dir, f"model {name!r} has no version {version} (has {sorted(available)})"
        )
    return model_dir / str(version)


def versions(model_dir: Path) -> list[int]:
    """Published versions: numeric folders (staging folders are hidden and never counted)."""
    if not model_dir.is_dir():
        return []
    return [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]


def publish(
    models_dir: Path | str, name: str, manifest: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Write a bundle into a hidden staging folder, then rename it to the next version.

    `write_files(folder)` writes model.onnx and any extras; bundle.json is written last, with the
    graph's sha256, the version and the creation time filled in here.
    """
    model_dir = Path(models_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write_files(staging)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            **manifest,
            "sha256": sha256_file(staging / GRAPH),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        while True:
            version = max(versions(model_dir), default=0) + 1
            manifest["version"] = version
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
            target = model_dir / str(version)
            try:
                os.rename(staging, target)  # atomic; fails if another writer took this version
                return target
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
