"""A user's own CSV or Parquet data: one file or directory split here (`load_source`), or files
that came split into training, validation and test (`load`). Every file is checked before any
training (`training.data.checks`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.bundle.features import FeatureSpec
from training.data.checks import (
    DataError,
    counts,
    delimiter_of,
    header_columns,
    label_values,
    raw_columns,
    require_columns,
    text_of,
    warn_many_values,
)
from training.data.splits import (
    SplitPlan,
    Splits,
    Task,
    derived,
    fingerprint_files,
    label_range,
)
from training.readers import Table

PARQUET = (".parquet", ".pq")
CSV = (".csv", ".tsv", ".txt")
PARTS = ("train", "validation", "test")


def source_files(path: Path) -> list[Path]:
    """A file, or the CSV or Parquet files of a directory (one format), in name order."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path} not found")
    found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    parquet = [p for p in found if p.suffix.lower() in PARQUET]
    text = [p for p in found if p.suffix.lower() in CSV]
    if parquet and text:
        raise DataError(
            f"{path} holds CSV ({text[0].name}) and Parquet ({parquet[0].name}) files:"
            " a directory is read as one table of one format"
        )
    if not (parquet or text):
        raise DataError(f"{path} holds no CSV (.csv, .tsv, .txt) or Parquet (.parquet, .pq) files")
    return parquet or text


def read_checked(
    path: Path,
    spec: FeatureSpec,
    task: Task,
    delimiter: str | None = None,
    positive_label: str | None = None,
    order_by: str | None = None,
) -> tuple[Table, np.ndarray | None]:
    """One file's fields and label, checked, and the `order_by` column's values where named."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found")
    wanted = {f.name: f"{f.kind} field in --fields" for f in spec.fields}
    wanted[spec.label] = "the label, --label"
    if order_by is not None and order_by not in wanted:
        wanted[order_by] = "--split-by"
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    if path.suffix.lower() in PARQUET:
        try:
            present = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as error:
            raise DataError(f"{path}: not a Parquet file ({error})") from error
        require_columns(path, present, wanted)
        arrow = pq.read_table(path, columns=list(wanted))
    else:
        separator = delimiter_of(path, delimiter, list(wanted))
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
            header = file.readline()
        present = header_columns(header, separator)
        require_columns(path, present, wanted, separator)
        try:
            arrow = pacsv.read_csv(
                path,
                parse_options=pacsv.ParseOptions(delimiter=separator),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(wanted),
                    column_types={name: pa.string() for name in wanted},
                    strings_can_be_null=False,
                ),
            )
        except (pa.ArrowInvalid, pa.ArrowKeyError) as error:
            raise DataError(f"{path}: {error}") from error
    if arrow.num_rows == 0:
        raise DataError(f"{path} has a header but no rows")
    fields = [(f.name, f.kind) for f in spec.fields]
    columns = raw_columns(path, fields, arrow, "numeric field in --fields")
    label = label_values(path, spec.label, arrow.column(spec.label), task, positive_label)
    order = None if order_by is None else order_key(path, order_by, arrow.column(order_by))
    return Table(columns, label), order


def order_key(path: Path, column: str, values: pa.ChunkedArray) -> np.ndarray:
    """What --split-by orders rows by: numbers (and times) as numbers, other text as text."""
    kind = values.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        values = values.cast(pa.int64())
    text = text_of(values)
    if (text == "").any():
        raise DataError(
            f"{path}: column {column!r} (--split-by) is empty in {int((text == '').sum()):,} rows:"
            " every row needs a value to be ordered by"
        )
    try:
        return np.asarray([float(v) for v in text.tolist()])
    except ValueError:
        return text  # ISO dates and times order as text


def concat(tables: list[Table]) -> Table:
    first = tables[0]
    return Table(
        {n: np.concatenate([t.columns[n] for t in tables]) for n in first.columns},
        np.concatenate([t.label for t in tables]),
    )


def read_source(
    task: Task,
    spec: FeatureSpec,
    path: Path,
    delimiter: str | None = None,
    positive_label: str | None = None,
    order_by: str | None = None,
) -> tuple[Table, np.ndarray | None, list[Path]]:
    """Every row of a file or directory as one checked table, its order key, and its files."""
    paths = source_files(path)
    read = [read_checked(p, spec, task, delimiter, positive_label, order_by) for p in paths]
    table = concat([t for t, _ in read])
    keys = [k for _, k in read if k is not None]
    if keys and len({k.dtype.kind for k in keys}) > 1:  # numbers in one file, text in another
        keys = [k.astype(str) for k in keys]
    return table, (np.concatenate(keys) if keys else None), paths


def source_fingerprint(paths: list[Path], plan: SplitPlan, positive_label: str | None) -> str:
    """The files' fingerprint, then how they were split and labelled."""
    step = json.dumps({"split": plan.to_dict(), "positive_label": positive_label}, sort_keys=True)
    return derived(fingerprint_files(paths), step)


def split_table(
    table: Table, key: np.ndarray | None, plan: SplitPlan
) -> tuple[Table, Table, Table]:
    """Train, validation and test by the plan: a seeded shuffle, or the order of `key` (the
    latest rows tested)."""
    assert plan.fractions is not None
    if plan.method == "by_column":
        assert key is not None
        order = np.argsort(key, kind="stable")
    else:
        order = np.random.default_rng(plan.seed).permutation(len(table))
    n_train = int(plan.fractions[0] * len(table))
    n_valid = int(plan.fractions[1] * len(table))
    return (
        table.take(order[:n_train]),
        table.take(order[n_train : n_train + n_valid]),
        table.take(order[n_train + n_valid :]),
    )


def require_usable(
    where: tuple[str, str, str], task: Task, parts: tuple[Table, Table, Table]
) -> None:
    """Each split (read from `where`) needs rows, and under ctr both labels: AUC needs them, and
    so does learning."""
    for source, part, table in zip(where, PARTS, parts, strict=True):
        if len(table) == 0:
            raise DataError(
                f"{source}: the {part} split has no rows ({', '.join(f'{len(t):,}' for t in parts)}"
                " rows in train, validation, test): more rows, or other --split fractions"
            )
        if task == "ctr" and len(np.unique(table.label)) < 2:
            raise DataError(
                f"{source}: every label in the {part} split is {table.label[0]:g}"
                f" ({counts(table.label.astype(int).astype(str))}): ctr needs clicks and"
                " non-clicks in each split"
            )


def capped(parts: tuple[Table, Table, Table], max_rows: int | None) -> tuple[Table, Table, Table]:
    if not max_rows:
        return parts
    train, validation, test = (t.take(slice(0, max_rows)) for t in parts)
    return train, validation, test


def load_source(
    task: Task,
    spec: FeatureSpec,
    path: Path,
    plan: SplitPlan,
    delimiter: str | None = None,
    positive_label: str | None = None,
    max_rows: int | None = None,
) -> Splits:
    """One file or directory of rows, checked, then split by `plan` (random or by a column)."""
    table, key, paths = read_source(task, spec, path, delimiter, positive_label, plan.column)
    whole = split_table(table, key, plan)
    parts = capped(whole, max_rows)
    require_usable((str(path),) * 3, task, parts)
    warn_many_values(Path(path), spec, parts[0].columns)
    fingerprint = source_fingerprint(paths, plan, positive_label)
    if any(len(a) != len(b) for a, b in zip(parts, whole, strict=True)):  # the cap left rows out
        fingerprint = derived(fingerprint, f"max-rows={max_rows}")
    return Splits(
        "files", task, spec, *parts, label_range(parts[0].label), fingerprint, plan, positive_label
    )


def load(
    task: Task,
    spec: FeatureSpec,
    train: Path,
    validation: Path,
    test: Path,
    delimiter: str | None = None,
    positive_label: str | None = None,
) -> Splits:
    """The three splits from files that came split, each checked."""
    paths = [Path(train), Path(validation), Path(test)]
    tables = [read_checked(p, spec, task, delimiter, positive_label)[0] for p in paths]
    parts = (tables[0], tables[1], tables[2])
    require_usable((str(paths[0]), str(paths[1]), str(paths[2])), task, parts)
    warn_many_values(paths[0], spec, parts[0].columns)
    fingerprint = fingerprint_files(paths)
    if positive_label is not None:
        fingerprint = derived(fingerprint, f"positive-label={positive_label}")
    return Splits(
        "files", task, spec, *parts, label_range(parts[0].label), fingerprint,
        SplitPlan("files"), positive_label,
    )  # fmt: skip
