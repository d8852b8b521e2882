"""Readers: CSV, Parquet and libFM files -> a `Table` of raw field columns and labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.bundle.features import MISSING, FeatureSpec


@dataclass
class Table:
    """Raw values per field (str for categorical, float64 for numeric) and float32 labels."""

    columns: dict[str, np.ndarray]
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def take(self, rows: np.ndarray | slice) -> Table:
        return Table({k: v[rows] for k, v in self.columns.items()}, self.label[rows])


def read_table(path: Path, spec: FeatureSpec, delimiter: str = ",") -> Table:
    """Read a CSV (any delimiter) or Parquet file holding the spec's fields and its label."""
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        arrow = pq.read_table(path, columns=[*spec.names, spec.label])
    else:
        types = {f.name: pa.string() for f in spec.fields if f.kind == "categorical"}
        try:
            arrow = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=delimiter),
                convert_options=pacsv.ConvertOptions(
                    include_columns=[*spec.names, spec.label], column_types=types
                ),
            )
        except (pa.ArrowKeyError, pa.ArrowInvalid) as error:
            raise ValueError(f"{path}: {error}") from error
    return from_arrow(arrow, spec)


def from_arrow(arrow: pa.Table, spec: FeatureSpec) -> Table:
    missing = [name for name in [*spec.names, spec.label] if name not in arrow.column_names]
    if missing:
        raise ValueError(f"columns missing from the data: {', '.join(missing)}")
    columns: dict[str, np.ndarray] = {}
    for f in spec.fields:
        column = arrow.column(f.name)
        if f.kind == "categorical":
            text = pc.fill_null(pc.cast(column, pa.string()), MISSING)
            columns[f.name] = np.asarray(text.to_numpy(zero_copy_only=False), dtype=str)
        else:
            columns[f.name] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    label = pc.cast(arrow.column(spec.label), pa.float32()).to_numpy(zero_copy_only=False)
    if np.isnan(label).any():
        raise ValueError(f"label column {spec.label!r} has missing values")
    return Table(columns, np.array(label, dtype=np.float32))  # a writable copy for torch


def read_libfm(path: Path, field_names: list[str]) -> Table:
    """Read libFM rows `label idx:1 idx:1 ...` with one feature per field, field = position.

    The raw value of a field is its global libFM index (as text), so vocabularies fitted on these
    columns index the same rows exactly as vocabularies fitted on the named CSV export would.
    """
    labels: list[float] = []
    columns: list[list[str]] = [[] for _ in field_names]
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            label, *features = line.split()
            if len(features) != len(field_names):
                raise ValueError(
                    f"{path}:{number}: {len(features)} features, expected one per field "
                    f"({len(field_names)})"
                )
            labels.append(float(label))
            for column, feature in zip(columns, features, strict=True):
                index, _, value = feature.partition(":")
                if float(value) != 1.0:
                    raise ValueError(f"{path}:{number}: only one-hot libFM rows are supported")
                column.append(index)
    return Table(
        {
            name: np.asarray(column, dtype=str)
            for name, column in zip(field_names, columns, strict=True)
        },
        np.asarray(labels, dtype=np.float32),
    )
