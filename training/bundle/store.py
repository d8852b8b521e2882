"""Bundles on disk: publish atomically, resolve a version, read back only when every check passes.

    models/<name>/<version>/model.onnx + bundle.json (+ checkpoint.pt, plots)
    models/<name>/promoted.json (the version to serve; `training.bundle.alias`)

A bundle is staged in a hidden sibling folder and renamed to the next version. Reading checks the
manifest against its schema, the files, the graph's sha256 and, when a session is opened, the
graph's inputs and outputs against what bundle.json declares. Publishing is not serving: a version
is served once promoted (or while no version of its model is).
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
from pydantic import ValidationError

from training.bundle.alias import Promotion, read_alias, write_alias
from training.bundle.errors import BundleError
from training.bundle.features import FeatureEncoder
from training.bundle.manifest import FORMAT_VERSION, Manifest, problems
from training.bundle.session import open_session

MANIFEST = "bundle.json"
GRAPH = "model.onnx"


@dataclass
class Bundle:
    """A verified bundle on disk: its manifest and the feature encoding it was trained with."""

    path: Path
    manifest: Manifest
    encoder: FeatureEncoder

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(self.manifest.pairs)

    @property
    def bias(self) -> float:
        return self.manifest.bias

    @property
    def graph_path(self) -> Path:
        return self.path / GRAPH

    def session(self, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
        """An onnxruntime session on the graph, refused if its I/O disagrees with bundle.json."""
        return open_session(self.graph_path, self.manifest.io, options)

    def score(self, columns: Mapping[str, Any], batch_size: int = 8192) -> np.ndarray:
        """The graph's `score` output (after the link) for raw feature columns, in batches."""
        return self.run(columns, ["score"], batch_size)["score"]

    def run(
        self, columns: Mapping[str, Any], outputs: list[str], batch_size: int = 8192
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
    """Read and verify a bundle folder; raises BundleError naming the first problem found.

    A folder named by a number (`<name>/<version>/`) must hold a manifest of that version.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(path, f"{MANIFEST} is missing (not a bundle, or half-written)")
    try:
        data = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(path, f"{MANIFEST} is not valid JSON: {error}") from error
    found = data.get("format_version") if isinstance(data, dict) else None
    if found != FORMAT_VERSION:
        raise BundleError(
            path, f"unknown format version {found!r} (this reader knows {FORMAT_VERSION})"
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as error:
        raise BundleError(path, f"{MANIFEST} is not valid: {problems(error)}") from None
    if path.name.isdigit() and int(path.name) != manifest.version:
        raise BundleError(
            path,
            f"version mismatch: the folder is version {int(path.name)},"
            f" {MANIFEST} says version {manifest.version}",
        )
    graph = path / GRAPH
    if not graph.is_file():
        raise BundleError(path, f"{GRAPH} is missing")
    if (digest := sha256_file(graph)) != manifest.sha256:
        raise BundleError(
            path,
            f"checksum mismatch: {GRAPH} has sha256 {digest}, bundle.json says {manifest.sha256}",
        )
    return Bundle(path, manifest, manifest.encoder)


def resolve(models_dir: Path | str, name: str | None = None, version: int | None = None) -> Path:
    """The folder of a bundle: the given version of `name`, else its promoted version, else its
    highest. Without a name, the only model of the directory; several models are refused (the
    error lists them) rather than one guessed."""
    models_dir = Path(models_dir)
    if name is None:
        names = model_names(models_dir)
        if not names:
            raise BundleError(models_dir, "no bundle found")
        if len(names) > 1:
            raise BundleError(models_dir, f"several models and none chosen: {', '.join(names)}")
        name = names[0]
    model_dir = models_dir / name
    available = versions(model_dir)
    if not available:
        raise BundleError(model_dir, f"no bundle of model {name!r}")
    if version is None:
        version = promoted(models_dir, name)
        if version is None:
            return model_dir / str(max(available))
        if version not in available:
            raise BundleError(
                model_dir,
                f"model {name!r} has promoted version {version}, which is not there"
                f" (has {sorted(available)})",
            )
        return model_dir / str(version)
    if version not in available:
        raise BundleError(
            model_dir, f"model {name!r} has no version {version} (has {sorted(available)})"
        )
    return model_dir / str(version)


def model_names(models_dir: Path | str) -> list[str]:
    """Names of the models with at least one published version, sorted."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in models_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and versions(p)
    )


def promoted(models_dir: Path | str, name: str) -> int | None:
    """The promoted version of `name`; None when none is. BundleError for a broken alias."""
    promotion = promotion_of(models_dir, name)
    return promotion.version if promotion is not None else None


def promotion_of(models_dir: Path | str, name: str) -> Promotion | None:
    """The promotion record of `name` (promoted.json); None when none is promoted."""
    return read_alias(Path(models_dir) / name)


def promote(models_dir: Path | str, name: str, version: int, by: str) -> Promotion:
    """Make `version` of `name` the promoted one, refused (BundleError) unless it verifies."""
    model_dir = Path(models_dir) / name
    if version not in versions(model_dir):
        raise BundleError(
            model_dir,
            f"model {name!r} has no version {version} (has {sorted(versions(model_dir))})",
        )
    bundle = read(model_dir / str(version))
    bundle.session()  # the graph loads and its I/O matches bundle.json
    promotion = Promotion(
        name=name,
        version=version,
        by=by,
        at=datetime.now(UTC).isoformat(timespec="seconds"),
        sha256=bundle.manifest.sha256,
        metrics=bundle.manifest.metrics,
    )
    write_alias(model_dir, promotion)
    return promotion


def versions(model_dir: Path) -> list[int]:
    """Published versions: numeric folders (staging folders are hidden and never counted)."""
    if not model_dir.is_dir():
        return []
    return [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]


def publish(
    models_dir: Path | str, name: str, manifest: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Write a bundle into a hidden staging folder, then rename it to the next version.

    `write_files(folder)` writes model.onnx and any extras. bundle.json is written last, with the
    graph's sha256, the version and the creation time filled in here, and validated as `Manifest`
    first: a writer cannot publish a bundle that a reader would refuse.
    """
    model_dir = Path(models_dir) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        write_files(staging)
        draft = {
            "format_version": FORMAT_VERSION,
            "name": name,
            **manifest,
            "sha256": sha256_file(staging / GRAPH),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        while True:
            version = max(versions(model_dir), default=0) + 1
            validated = Manifest.model_validate({**draft, "version": version})
            (staging / MANIFEST).write_text(json.dumps(validated.to_json_dict(), indent=1))
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
