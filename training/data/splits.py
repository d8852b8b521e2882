"""The shape every data set loads into, and the helpers the loaders share."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.bundle import sha256_file
from training.bundle.features import FeatureSpec
from training.readers import Table

Task = Literal["ctr", "rating"]
SplitMethod = Literal["random", "by_column", "files"]


@dataclass(frozen=True)
class SplitPlan:
    """How rows become training, validation and test: a seeded shuffle cut by `fractions`, the
    rows ordered by `column` with the last ones tested, or files that came split."""

    method: SplitMethod
    fractions: tuple[float, float, float] | None = None
    column: str | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plan as the bundle's `data.split` records it (unset keys left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Splits:
    """Train/validation/test tables with labels in the task's convention (ctr: 0/1; rating: the
    rating scale, frappe's ±1 as in the paper), the label range ratings are clipped to, and a
    fingerprint of the data that trains the model."""

    name: str
    task: Task
    spec: FeatureSpec
    train: Table
    validation: Table
    test: Table
    label_range: tuple[float, float]
    fingerprint: str
    split: SplitPlan | None = None
    positive_label: str | None = None  # ctr: the label value read as 1, where the data names one


def derived(fingerprint: str, step: str) -> str:
    """The fingerprint of data made from the fingerprinted data by `step`."""
    return hashlib.sha256(f"{fingerprint}:{step}".encode()).hexdigest()


def fingerprint_files(paths: Iterable[Path]) -> str:
    return hashlib.sha256(
        json.dumps({Path(p).name: sha256_file(Path(p)) for p in paths}, sort_keys=True).encode()
    ).hexdigest()


def task_labels(label: np.ndarray, task: Task, binary: bool) -> np.ndarray:
    """ctr keeps 0/1; a binary label under the rating task becomes ±1, as the paper scores frappe."""
    if task == "rating" and binary:
        return (2.0 * label - 1.0).astype(np.float32)
    return label.astype(np.float32)


def label_range(label: np.ndarray) -> tuple[float, float]:
    return float(label.min()), float(label.max())


def split_rows(
    table: Table, seed: int, fractions: tuple[float, float]
) -> tuple[Table, Table, Table]:
    """A seeded random split into train, validation and test by the first two fractions."""
    order = np.random.default_rng(seed).permutation(len(table))
    n_train = int(fractions[0] * len(table))
    n_valid = int(fractions[1] * len(table))
    return (
        table.take(order[:n_train]),
        table.take(order[n_train : n_train + n_valid]),
        table.take(order[n_train + n_valid :]),
    )
