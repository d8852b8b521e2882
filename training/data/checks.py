"""Checks on a user's own files before any training: each problem names the file, the column and
what was found, so the user can fix the data rather than read a pyarrow or torch traceback."""

from __future__ import annotations

import contextlib
import csv
import difflib
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from training.bundle.features import DEFAULT_BUCKETS, MISSING, TEXT_KINDS, FeatureSpec, FieldSpec
from training.data.splits import Task

KINDS = ("categorical", "numeric", "log", "bucket", "hash")  # what --fields declares
DELIMITERS = ",;\t|"  # what --delimiter may be left to find
SNIFF_BYTES = 64 * 1024
# text read as a missing number (pyarrow's CSV reader reads these as null too)
MISSING_NUMBER = {"", "na", "n/a", "nan", "null", "none", "#n/a", "-nan"}
TRUE_FALSE = {"true": 1.0, "false": 0.0}
# a categorical with more distinct values than this share of its rows is worth a warning
MANY_VALUES = 0.9
MANY_VALUES_MIN_ROWS = 50


class DataError(ValueError):
    """A problem with the user's data or data options, in words for the user."""


def parse_fields(text: str, label: str) -> FeatureSpec:
    """`--fields` and `--label` as a spec, refusing a field named twice or the label as a field."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise DataError("--fields: needs at least one field, e.g. --fields user,item,price:numeric")
    fields: list[FieldSpec] = []
    for item in items:
        name, *rest = item.split(":")
        if not name:
            raise DataError(f"--fields: {item!r} has no column name")
        kind = rest[0] if rest else "categorical"
        if kind not in KINDS or len(rest) > (1 if kind in ("numeric", "log") else 2):
            raise DataError(
                f"--fields: {item!r} is not name[:categorical[:min_count]], name:numeric,"
                " name:log or name:bucket[:buckets], or name:hash:buckets"
            )
        if kind == "hash" and len(rest) < 2:
            raise DataError(
                f"--fields: {item!r}: a hashed field needs its buckets, e.g. {name}:hash:100000"
            )
        count = 1 if kind == "categorical" else DEFAULT_BUCKETS
        if len(rest) == 2:
            least = 1 if kind in TEXT_KINDS else 2
            if not rest[1].isdigit() or int(rest[1]) < least:
                what = "min_count" if kind == "categorical" else "the number of buckets"
                raise DataError(f"--fields: {item!r}: {what} must be a whole number >= {least}")
            count = int(rest[1])
        if kind == "categorical":
            fields.append(FieldSpec(name, "categorical", min_count=count))
        elif kind == "bucket":
            fields.append(FieldSpec(name, "bucket", buckets=count))
        elif kind == "hash":
            fields.append(FieldSpec(name, "hash", buckets=count))
        else:
            fields.append(FieldSpec(name, "numeric" if kind == "numeric" else "log"))
    names = [f.name for f in fields]
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise DataError(f"--fields names column {twice[0]!r} twice: each field once")
    if label in names:
        raise DataError(
            f"--label {label!r} is also in --fields: the label cannot be an input;"
            " drop it from --fields or pass the right --label"
        )
    return FeatureSpec(tuple(fields), label)


def delimiter_of(path: Path, given: str | None, wanted: Sequence[str]) -> str:
    """The CSV delimiter: `given`, else the one of DELIMITERS under which the header holds the most
    `wanted` columns, else what csv.Sniffer finds; a file none of them splits is refused."""
    if given:
        return "\t" if given in ("\\t", "tab") else given
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
        sample = file.read(SNIFF_BYTES)
    header = sample.splitlines()[0] if sample else ""
    try:
        sniffed: str | None = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        sniffed = None

    def found(delimiter: str) -> int:
        return len(set(header_columns(header, delimiter)) & set(wanted))

    candidates = [d for d in (sniffed, *DELIMITERS) if d is not None]
    best: str = max(candidates, key=found)  # the first of the best: the sniffed one on a tie
    if found(best):
        return best
    if sniffed is None:
        raise DataError(
            f"{path}: could not detect the delimiter: the header {header[:80]!r} splits on none"
            " of , ; tab |; pass --delimiter"
        )
    return sniffed


def header_columns(header: str, delimiter: str) -> list[str]:
    return [name.strip() for name in next(csv.reader([header], delimiter=delimiter), [])]


def require_columns(
    path: Path, present: Sequence[str], wanted: dict[str, str], delimiter: str | None = None
) -> None:
    """Refuse a file without a wanted column (name -> its role), naming the nearest one present."""
    for name, role in wanted.items():
        if name in present:
            continue
        near = difflib.get_close_matches(name, present, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        listed = ", ".join(present[:30]) + (" ..." if len(present) > 30 else "")
        message = f"{path}: no column {name!r} ({role}){hint}; the columns are: {listed}"
        if delimiter is not None and len(present) == 1:
            others = [d for d in DELIMITERS if d != delimiter and d in present[0]]
            if others:
                message += (
                    f". The header reads as one column under the delimiter {delimiter!r}:"
                    f" is it {others[0]!r}? (--delimiter)"
                )
        raise DataError(message)


def examples(values: Iterable[str], most: int = 3) -> str:
    return ", ".join(repr(v) for v in list(dict.fromkeys(values))[:most])


def counts(values: np.ndarray, most: int = 5) -> str:
    """`0 (1,012 rows), 2 (988 rows)`: the commonest values of a column."""
    common = Counter(values.tolist()).most_common()
    shown = ", ".join(f"{v!r} ({n:,} rows)" for v, n in common[:most])
    return shown + (f" and {len(common) - most} more values" if len(common) > most else "")


def text_of(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as stripped text, nulls as ''."""
    text = pc.fill_null(pc.cast(values, pa.string()), "")
    return np.char.strip(np.asarray(text.to_numpy(zero_copy_only=False), dtype=str))


def raw_columns(
    path: Path,
    fields: Iterable[tuple[str, str]],
    table: pa.Table | pa.RecordBatch,
    role: str,
) -> dict[str, np.ndarray]:
    """Raw values per (name, kind) field as the encoder takes them: categorical and hashed text
    (integers as their decimal digits) with missing values as MISSING, every other kind float64
    with NaN for missing."""
    columns: dict[str, np.ndarray] = {}
    for name, kind in fields:
        column = table.column(name)
        if kind in TEXT_KINDS:
            text = text_of(column)
            columns[name] = np.where(text == "", MISSING, text)
        else:
            columns[name] = numbers_of(path, name, column, role)
    return columns


def numbers_of(
    path: Path, column: str, values: pa.ChunkedArray | pa.Array, role: str
) -> np.ndarray:
    """A column as float64, missing values as NaN; text that is no number is refused with how
    many rows hold it and examples."""
    if (
        pa.types.is_boolean(values.type)
        or pa.types.is_integer(values.type)
        or pa.types.is_floating(values.type)
    ):
        return np.asarray(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)  # fmt: skip
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        raise DataError(f"{path}: column {column!r} ({role}) holds {values.type}, not numbers")
    text = text_of(values)
    missing = np.isin(np.char.lower(text), list(MISSING_NUMBER))
    with contextlib.suppress(pa.ArrowInvalid):  # the usual case, at arrow's speed
        parsed = pc.cast(pa.array(text, mask=missing), pa.float64())
        return np.asarray(parsed.to_numpy(zero_copy_only=False), dtype=np.float64)
    result = np.full(len(text), np.nan)
    bad: list[str] = []
    for i in np.flatnonzero(~missing):
        try:
            result[i] = float(text[i])
        except ValueError:
            bad.append(str(text[i]))
    if bad:
        raise DataError(
            f"{path}: column {column!r} ({role}) has {len(bad):,} values that are not numbers,"
            f" e.g. {examples(bad)}"
            + (
                "; if it is not a number, declare it categorical"
                if role.startswith("numeric")
                else ""
            )
        )
    return result


def label_values(
    path: Path, column: str, values: pa.ChunkedArray | pa.Array, task: Task,
    positive_label: str | None,
) -> np.ndarray:  # fmt: skip
    """The label in the task's convention (ctr: 0/1, rating: finite numbers), or a DataError
    saying which values were found and what the task takes."""
    text = text_of(values)
    empty = np.flatnonzero(text == "")
    if empty.size:
        raise DataError(
            f"{path}: label column {column!r} is empty in {empty.size:,} rows"
            f" (the first: data row {empty[0] + 1}); every row needs a label"
        )
    if task == "rating":
        rating = numbers_of(path, column, values, "the label")
        odd = ~np.isfinite(rating)
        if odd.any():
            raise DataError(
                f"{path}: label column {column!r} has {int(odd.sum()):,} values that are not"
                f" finite numbers, e.g. {examples(text[odd].tolist())}; --task rating needs numbers"
            )
        return np.asarray(rating, dtype=np.float32)
    if positive_label is not None:
        positive = text == positive_label.strip()
        if not positive.any():
            with contextlib.suppress(DataError, ValueError):  # 2 and 2.0 name the same number
                positive = numbers_of(path, column, values, "the label") == float(positive_label)
        if not positive.any():
            raise DataError(
                f"{path}: label column {column!r} has no value {positive_label!r}"
                f" (--positive-label); it holds {counts(text)}"
            )
        return np.asarray(positive, dtype=np.float32)
    lower = np.char.lower(text)
    if np.isin(lower, list(TRUE_FALSE)).all():
        return np.asarray(lower == "true", dtype=np.float32)
    if np.isin(text, ("0", "1")).all():
        return np.asarray(text == "1", dtype=np.float32)
    numbers: np.ndarray | None
    try:
        numbers = numbers_of(path, column, values, "the label")
    except DataError:
        numbers = None
    if numbers is not None and np.isin(numbers, (0.0, 1.0)).all():
        return np.asarray(numbers, dtype=np.float32)
    raise DataError(
        f"{path}: label column {column!r} holds {counts(text)}; --task ctr needs 0/1 or"
        f" true/false: name the value that means a click with --positive-label"
        f" {guess_positive(text, numbers)}, or use --task rating for a numeric target"
    )


def guess_positive(text: np.ndarray, numbers: np.ndarray | None) -> str:
    """A likely positive value for the message: a word like "yes", else the largest number, else
    the rarer value."""
    values: Counter[str] = Counter(str(v) for v in text.tolist())
    for word in ("yes", "y", "click", "clicked", "true", "positive", "1"):
        for value in values:
            if value.lower() == word:
                return value
    if numbers is not None:
        return str(text[int(np.argmax(numbers))])
    return min(values, key=lambda v: (values[v], v))


def warn_many_values(where: Path, spec: FeatureSpec, columns: dict[str, np.ndarray]) -> None:
    """Warn on stderr about a categorical field with nearly one value per row: most of its values
    will be unseen when served; a number or an id is the likely cause."""
    for f in spec.fields:
        if f.kind != "categorical":
            continue
        column = columns[f.name]
        rows = len(column)
        distinct = len(np.unique(column))
        if rows < MANY_VALUES_MIN_ROWS or distinct <= MANY_VALUES * rows:
            continue
        numeric = all(_is_number(v) for v in column[: min(rows, 1000)].tolist())
        advice = (
            f"it looks numeric: declare it {f.name}:numeric"
            if numeric
            else "if it is an id, little of it will generalise; leave it out of --fields, raise"
            f" its min_count ({f.name}:categorical:5) or hash it ({f.name}:hash:100000)"
        )
        print(
            f"warning: {where}: categorical field {f.name!r} has {distinct:,} distinct values"
            f" in {rows:,} training rows, nearly one per row; {advice}",
            file=sys.stderr,
        )


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
