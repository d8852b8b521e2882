"""A user's own CSV or Parquet files, already split into training, validation and test."""

from __future__ import annotations

from pathlib import Path

from training.bundle.features import FeatureSpec
from training.data.splits import Splits, Task, fingerprint_files, label_range
from training.readers import read_table


def load(
    task: Task, spec: FeatureSpec, train: Path, validation: Path, test: Path, delimiter: str = ","
) -> Splits:
    """The three splits, read with a declared feature spec."""
    paths = [Path(train), Path(validation), Path(test)]
    train_table, validation_table, test_table = (read_table(p, spec, delimiter) for p in paths)
    fingerprint = fingerprint_files(paths)
    return Splits(
        "files",
        task,
        spec,
        train_table,
        validation_table,
        test_table,
        label_range(train_table.label),
        fingerprint,
    )
