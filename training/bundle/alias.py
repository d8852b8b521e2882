"""promoted.json: the version of a model that is served, chosen by a person, not by publishing.

    models/<name>/promoted.json   {"name", "version", "by", "at", "sha256", "metrics"}

Written to a hidden temporary file beside it and renamed over it, so a reader sees the old alias
or the new one, never half of one. `python -m training.bundle alias-schema` prints its JSON Schema
(docs/promoted.schema.json).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from pydantic import Field, PositiveInt, ValidationError

from training.bundle.errors import BundleError
from training.bundle.manifest import Metrics, _Model, problems

ALIAS = "promoted.json"


class Promotion(_Model):
    """Which version of a model is promoted, by whom, when, and how well it tested."""

    name: str = Field(min_length=1, pattern=r"^[^/\\]+$")
    version: PositiveInt
    by: str = Field(min_length=1, description="who promoted it")
    at: str = Field(description="ISO 8601 time of promotion, UTC")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the version's model.onnx")
    metrics: Metrics | None = Field(default=None, description="the version's metrics")


def read_alias(model_dir: Path) -> Promotion | None:
    """The promotion of the model in `model_dir`; None when none is promoted. BundleError when
    promoted.json is unreadable or names another model: a broken alias is not "none promoted"."""
    path = model_dir / ALIAS
    if not path.is_file():
        return None
    try:
        promotion = Promotion.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BundleError(path, f"{ALIAS} is not valid JSON: {error}") from error
    except ValidationError as error:
        raise BundleError(path, f"{ALIAS} is not valid: {problems(error)}") from None
    if promotion.name != model_dir.name:
        raise BundleError(
            path, f"{ALIAS} promotes model {promotion.name!r}, not {model_dir.name!r}"
        )
    return promotion


def write_alias(model_dir: Path, promotion: Promotion) -> Path:
    """Write promoted.json atomically (a temporary file renamed over it)."""
    path = model_dir / ALIAS
    staging = model_dir / f".{ALIAS}.{uuid.uuid4().hex}"
    try:
        with open(staging, "w") as f:
            f.write(json.dumps(promotion.model_dump(exclude_none=True), indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return path
