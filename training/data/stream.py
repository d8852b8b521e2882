"""Streaming input: a directory of Parquet (or CSV) files read in record batches, never held whole.

`train --stream --data DIR` goes through here instead of reading every split into memory:

    source = StreamSource(files, spec, "ctr", fractions=(0.8, 0.1, 0.1), seed=0)
    fitted = fit_vocabularies(source, min_count=1, max_size=None)   # one pass over the rows
    train = StreamSplit(source, fitted.encoder, "train", shuffle_rows=100_000)
    for batch in train.batches(2048, shuffle=True, generator=g):   # a trainer.Tensors each
        ...

The interface a distributed trainer needs:
- `StreamSource.shard(rank, world_size)`: the same source restricted to one rank's part. With at
  least as many files as ranks a rank reads whole files (`files[rank::world_size]`); with fewer,
  the Parquet row groups of all files are dealt out in turn (CSV files have no row groups: then
  there must be a file per rank). The ranks' parts partition the rows exactly.
- `StreamSplit(...).batches(batch_size, shuffle, generator)` and `len()`: what `trainer.fit` takes
  from `trainer.Tensors` too. `len` is this shard's rows of the split (counted from Parquet
  metadata, without reading the data). Each rank fits the same vocabularies by calling
  `fit_vocabularies` on the unsharded source (or rank 0 fits and the encoder is broadcast).

Splits: a row's split (train, validation, test by `fractions`) is drawn from a hash of (seed,
the file's name, the row's number in its file), so it never depends on how the file is cut into
record batches or row groups, on the shard, or on the order pieces are read in. It is not the
permutation the in-memory path draws with the same seed: a streamed bundle records `data.stream`.
`--split-by COLUMN` needs every row's key before any row can be placed, so it is refused here.

Shuffling: each epoch reads the shard's pieces (files or row groups) in a seeded order and passes
the training rows through a buffer of `shuffle_rows` rows: once full, each arriving row takes the
place of a random row of the buffer, which is emitted (the buffer is emptied in random order at the
end). The epoch's seed comes from the trainer's generator, so epochs differ and runs repeat. A row
is never emitted more than `shuffle_rows` places before it was read.

Vocabularies in one pass over the training rows: value counts per categorical field merged across
record batches with pyarrow (`value_counts`, then a group-by sum when the pending counts grow), then
`min_count` and `max_size` (the most frequent kept, ties by first appearance as in memory); numeric
fields' mean, standard deviation, min and max merged exactly (Chan's parallel moments); bucket
fields' quantile cuts from a seeded reservoir sample of RESERVOIR values (exact while the training
rows hold fewer values, an estimate beyond) with the exact min and max; hashed fields' example
values from the counts of their first HASH_EXAMPLE_ROWS training rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import xxhash

from training.bundle.features import (
    HASH_EXAMPLES,
    MISSING,
    AnyField,
    BucketField,
    CategoricalField,
    FeatureEncoder,
    FeatureSpec,
    FieldSpec,
    HashedField,
    NumericField,
)
from training.data.checks import DataError, delimiter_of, label_values, raw_columns, require_columns
from training.data.files import CSV, PARQUET
from training.data.splits import Task

if TYPE_CHECKING:
    import torch

    from training.trainer import Tensors

SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "validation", "test")
# Rows per record batch read: memory grows with it, not with the data. Each batch's text columns
# pass through Python strings and numpy arrays the process does not hand back at once: reading
# 600k criteo-like rows held 730 MB at 65,536 rows a batch and 476 MB at 16,384
# (docs/experiments/streaming.md).
READ_ROWS = 16_384
# Record batches pyarrow decodes ahead of the one in use, and whether it buffers a file's column
# chunks ahead of decoding them (pre_buffer, meant for object stores). Its defaults (16 batches,
# 4 files, buffered) held 514 MB of arrow memory reading a 1.25M-row criteo-like file; one batch
# ahead, unbuffered, 109 MB (docs/experiments/streaming.md).
READ_AHEAD = 1
PRE_BUFFER = False
SHUFFLE_ROWS = 100_000  # the shuffle buffer's rows by default (about 47 MB at 39 fields)
RESERVOIR = 100_000  # values sampled per bucket field for its quantile cuts
HASH_EXAMPLE_ROWS = 1_000_000  # training rows whose counts pick a hashed field's examples
MERGE_ROWS = 500_000  # pending per-batch counts merged once they hold this many entries
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class Piece:
    """What one rank reads: a whole file, or one Parquet row group of it."""

    path: Path
    row_group: int | None  # None: the whole file
    first_row: int  # the piece's first row's number within its file


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: well-spread 64-bit values from consecutive ones."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return np.asarray(x ^ (x >> np.uint64(31)))


def row_splits(
    path: Path, first_row: int, rows: int, seed: int, fractions: tuple[float, float, float]
) -> np.ndarray:
    """0 (train), 1 (validation) or 2 (test) for rows first_row .. first_row + rows of a file."""
    key = np.uint64(xxhash.xxh64_intdigest(Path(path).name.encode("utf-8"), seed))
    numbers = np.arange(first_row, first_row + rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        uniform = (mix64(numbers * GOLDEN + key) >> np.uint64(11)) * (1.0 / 2**53)
    cut_train, cut_valid = fractions[0], fractions[0] + fractions[1]
    return np.where(uniform < cut_train, 0, np.where(uniform < cut_valid, 1, 2)).astype(np.int8)


@dataclass(frozen=True)
class RawBatch:
    """A record batch's raw field columns (as the encoder takes them), labels and splits."""

    columns: dict[str, np.ndarray]
    label: np.ndarray  # float32
    split: np.ndarray  # int8: 0 train, 1 validation, 2 test

    def rows(self, split: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        keep = self.split == split
        return {n: c[keep] for n, c in self.columns.items()}, self.label[keep]


@dataclass(frozen=True)
class StreamSource:
    """CSV or Parquet files read a record batch at a time, each row in its seeded split."""

    files: tuple[Path, ...]
    spec: FeatureSpec
    task: Task
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    positive_label: str | None = None
    delimiter: str | None = None
    read_rows: int = READ_ROWS
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not self.files:
            raise DataError("a stream needs at least one file")
        suffixes = {p.suffix.lower() in PARQUET for p in self.files}
        if len(suffixes) > 1:
            raise DataError("a stream reads one format: Parquet or CSV files, not both")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world_size - 1}")

    @property
    def parquet(self) -> bool:
        return self.files[0].suffix.lower() in PARQUET

    def shard(self, rank: int, world_size: int) -> StreamSource:
        """The part of the rows rank `rank` of `world_size` reads (see the module docstring)."""
        return replace(self, rank=rank, world_size=world_size)

    def pieces(self) -> list[Piece]:
        """This shard's files, or its row groups when there are fewer files than ranks."""
        if len(self.files) >= self.world_size:
            return [Piece(p, None, 0) for p in self.files[self.rank :: self.world_size]]
        if not self.parquet:
            raise DataError(
                f"{len(self.files)} CSV files for {self.world_size} ranks: a CSV file is read"
                " whole by one rank, so give at least one file per rank (or Parquet)"
            )
        groups = [piece for path in self.files for piece in row_group_pieces(path)]
        return groups[self.rank :: self.world_size]

    @property
    def wanted(self) -> dict[str, str]:
        """The columns read, with the role each plays (for messages)."""
        columns = {f.name: f"{f.kind} field in --fields" for f in self.spec.fields}
        columns[self.spec.label] = "the label, --label"
        return columns

    def dataset(self, path: Path) -> ds.Dataset:
        """One file as a pyarrow dataset, its columns checked."""
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty")
        wanted = self.wanted
        if self.parquet:
            try:
                dataset = ds.dataset(path, format="parquet")
            except (pa.ArrowInvalid, OSError) as error:
                raise DataError(f"{path}: not a Parquet file ({error})") from error
            require_columns(path, dataset.schema.names, wanted)
            return dataset
        separator = delimiter_of(path, self.delimiter, list(wanted))
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as file:
            present = file.readline().rstrip("\r\n").split(separator)
        require_columns(path, [c.strip().strip('"') for c in present], wanted, separator)
        csv_format = ds.CsvFileFormat(
            parse_options=pacsv.ParseOptions(delimiter=separator),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in wanted}, strings_can_be_null=False
            ),
        )
        return ds.dataset(path, format=csv_format)

    def read(
        self, pieces: list[Piece] | None = None, split: int | None = None
    ) -> Iterator[RawBatch]:
        """The pieces' rows (default: this shard's, in order) a record batch at a time; with
        `split` (0 train, 1 validation, 2 test) only that split's rows, dropped in arrow before
        their text is converted (a validation pass over 10% of the rows converts 10% of them)."""
        fields = [(f.name, f.kind) for f in self.spec.fields]
        role = "numeric field in --fields"
        for piece in self.pieces() if pieces is None else pieces:
            dataset = self.dataset(piece.path)
            fragment = next(iter(dataset.get_fragments()))
            if piece.row_group is not None:
                fragment = fragment.subset(row_group_ids=[piece.row_group])
            first = piece.first_row
            try:
                batches = fragment.to_batches(
                    columns=list(self.wanted), batch_size=self.read_rows,
                    batch_readahead=READ_AHEAD, fragment_readahead=0,
                    fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=PRE_BUFFER)
                    if self.parquet else None,
                )  # fmt: skip
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    splits = row_splits(
                        piece.path, first, batch.num_rows, self.seed, self.fractions
                    )
                    first += batch.num_rows
                    if split is not None:
                        kept = splits == split
                        if not kept.any():
                            continue
                        batch, splits = batch.filter(pa.array(kept)), splits[kept]
                    columns = raw_columns(piece.path, fields, batch, role)
                    label = label_values(
                        piece.path, self.spec.label, batch.column(self.spec.label), self.task,
                        self.positive_label,
                    )  # fmt: skip
                    yield RawBatch(columns, label, splits)
            except (pa.ArrowInvalid, pa.ArrowKeyError) as error:
                raise DataError(f"{piece.path}: {error}") from error

    def count_rows(self) -> dict[SplitName, int]:
        """This shard's rows per split: from Parquet metadata, CSV by reading its labels."""
        counts = np.zeros(3, dtype=np.int64)
        for piece in self.pieces():
            if self.parquet:
                dataset = self.dataset(piece.path)
                fragment = next(iter(dataset.get_fragments()))
                groups = fragment.row_groups
                if piece.row_group is not None:
                    rows = groups[piece.row_group].num_rows
                else:
                    rows = sum(g.num_rows for g in groups)
                splits = row_splits(piece.path, piece.first_row, rows, self.seed, self.fractions)
                counts += np.bincount(splits, minlength=3)
            else:
                for batch in self.read([piece]):
                    counts += np.bincount(batch.split, minlength=3)
        return dict(zip(SPLITS, (int(c) for c in counts), strict=True))


def row_group_pieces(path: Path) -> list[Piece]:
    """A Parquet file's row groups, each with its first row's number."""
    fragment = next(iter(ds.dataset(path, format="parquet").get_fragments()))
    pieces, first = [], 0
    for group in fragment.row_groups:
        pieces.append(Piece(path, group.id, first))
        first += group.num_rows
    return pieces


def stream_files(path: Path) -> tuple[Path, ...]:
    """A file, or a directory's CSV or Parquet files (one format) in name order."""
    from training.data.files import source_files

    files = tuple(source_files(path))
    if not any(p.suffix.lower() in PARQUET + CSV for p in files):
        raise DataError(f"{path}: a stream reads CSV or Parquet files")
    return files


# --- vocabularies, statistics and quantiles in one pass ------------------------------------------


@dataclass
class ValueCounts:
    """Counts of a text column's values and where each first appeared, merged across batches."""

    merged: pa.Table | None = None
    pending: list[pa.Table] = field(default_factory=list)
    pending_rows: int = 0
    seen: int = 0  # rows counted so far: the next batch's first row number

    def add(self, values: np.ndarray) -> None:
        counted = pc.value_counts(pa.array(values, type=pa.string()))  # in order of appearance
        order = np.arange(self.seen, self.seen + len(counted), dtype=np.int64)
        self.pending.append(
            pa.table(
                {"value": counted.field("values"), "count": counted.field("counts"), "first": order}
            )
        )
        self.seen += len(values)
        self.pending_rows += len(counted)
        if self.pending_rows > max(MERGE_ROWS, 0 if self.merged is None else len(self.merged)):
            self.merge()

    def merge(self) -> pa.Table:
        parts = ([self.merged] if self.merged is not None else []) + self.pending
        if not parts:
            return pa.table({"value": pa.array([], pa.string()), "count": pa.array([], pa.int64()),
                             "first": pa.array([], pa.int64())})  # fmt: skip
        whole = pa.concat_tables(parts)
        grouped = whole.group_by("value").aggregate([("count", "sum"), ("first", "min")])
        self.merged = grouped.rename_columns({"count_sum": "count", "first_min": "first"})
        self.pending, self.pending_rows = [], 0
        return self.merged

    def most_frequent(self, min_count: int = 1, max_size: int | None = None) -> list[str]:
        """Values seen at least min_count times, most frequent first, ties by first appearance;
        the missing value never; at most max_size."""
        table = self.merge()
        keep = pc.and_(
            pc.greater_equal(table["count"], min_count), pc.not_equal(table["value"], MISSING)
        )
        table = table.filter(keep)
        order = pc.sort_indices(table, [("count", "descending"), ("first", "ascending")])
        if max_size is not None:
            order = order[:max_size]
        return [str(v) for v in table["value"].take(order).to_pylist()]


@dataclass
class Moments:
    """Count, mean, sum of squared deviations, min and max of finite values, merged exactly."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = np.inf
    high: float = -np.inf

    def add(self, values: np.ndarray) -> None:
        if not values.size:
            return
        n, mean = values.size, float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.low, self.high = (
            min(self.low, float(values.min())),
            max(self.high, float(values.max())),
        )


@dataclass
class Reservoir:
    """A uniform sample of at most `size` values (Algorithm R, vectorised, seeded)."""

    size: int
    rng: np.random.Generator
    values: np.ndarray = field(default_factory=lambda: np.empty(0))
    seen: int = 0

    def add(self, new: np.ndarray) -> None:
        room = max(0, self.size - len(self.values))
        if room:
            self.values = np.concatenate([self.values, new[:room]])
        rest = new[room:]
        if rest.size:
            numbers = self.seen + room + np.arange(rest.size)  # each value's number in the stream
            slots = (self.rng.random(rest.size) * (numbers + 1)).astype(np.int64)
            chosen = slots < self.size
            self.values[slots[chosen]] = rest[chosen]  # later values win a slot, as in sequence
        self.seen += new.size


@dataclass(frozen=True)
class StreamFit:
    """What one pass over the rows found: the fitted fields and the rows of each split."""

    encoder: FeatureEncoder
    rows: dict[SplitName, int]
    label_mean: float  # of the training rows
    label_range: tuple[float, float]  # of the training rows
    seconds: float


def with_min_count(spec: FeatureSpec, min_count: int) -> FeatureSpec:
    """Categorical fields keep values seen at least `min_count` times (or their own count, if
    larger: `city:categorical:5`)."""
    if min_count <= 1:
        return spec
    fields = tuple(
        replace(f, min_count=max(f.min_count, min_count)) if f.kind == "categorical" else f
        for f in spec.fields
    )
    return replace(spec, fields=fields)


def laid_out(fields: list[AnyField]) -> FeatureEncoder:
    """The fields with their blocks placed one after another, in order."""
    placed: list[AnyField] = []
    offset = 0
    for f in fields:
        if isinstance(f, CategoricalField):
            f = CategoricalField.fitted(f.name, offset, list(f.vocabulary))
        else:
            f = f.model_copy(update={"offset": offset})
        placed.append(f)
        offset += f.size
    return FeatureEncoder(placed)


def capped(encoder: FeatureEncoder, max_size: int | None) -> FeatureEncoder:
    """Each categorical vocabulary cut to its `max_size` most frequent values, blocks re-placed."""
    if max_size is None:
        return encoder
    fields: list[AnyField] = [
        CategoricalField.fitted(f.name, 0, list(f.vocabulary)[:max_size])
        if isinstance(f, CategoricalField)
        else f
        for f in encoder.fields
    ]
    return laid_out(fields)


def fit_vocabularies(
    source: StreamSource, min_count: int = 1, max_size: int | None = None
) -> StreamFit:
    """Fit every field on the source's training rows in one pass (see the module docstring), and
    count the rows of each split; refuse splits without rows (or, for ctr, without both labels)."""
    started = time.perf_counter()
    spec = with_min_count(source.spec, min_count)
    counts = {f.name: ValueCounts() for f in spec.fields if f.kind in ("categorical", "hash")}
    moments = {f.name: Moments() for f in spec.fields if f.kind in ("numeric", "log")}
    rng = np.random.default_rng([source.seed, 1])
    sample = {f.name: Reservoir(RESERVOIR, rng) for f in spec.fields if f.kind == "bucket"}
    bucket_range = {f.name: Moments() for f in spec.fields if f.kind == "bucket"}
    rows = np.zeros(3, dtype=np.int64)
    labels = [Moments() for _ in SPLITS]
    for batch in source.read():
        rows += np.bincount(batch.split, minlength=3)
        for split, moment in enumerate(labels):
            moment.add(batch.label[batch.split == split].astype(np.float64))
        columns, _ = batch.rows(0)
        for f in spec.fields:
            column = columns[f.name]
            if f.name in counts:
                tally = counts[f.name]
                if f.kind == "hash" and tally.seen >= HASH_EXAMPLE_ROWS:
                    continue
                tally.add(column)
            elif f.name in moments:
                finite = column[np.isfinite(column)]
                moments[f.name].add(
                    np.log1p(np.maximum(finite, 0.0)) if f.kind == "log" else finite
                )
            else:
                finite = column[np.isfinite(column)]
                sample[f.name].add(finite)
                bucket_range[f.name].add(finite)
    where = ", ".join(str(p) for p in source.files[:3]) + (" ..." if len(source.files) > 3 else "")
    for split, name in enumerate(SPLITS):
        if rows[split] == 0:
            raise DataError(
                f"{where}: the {name} split has no rows ({', '.join(f'{r:,}' for r in rows)} rows"
                " in train, validation, test): more rows, or other --split fractions"
            )
        if source.task == "ctr" and labels[split].low == labels[split].high:
            raise DataError(
                f"{where}: every label in the {name} split is {labels[split].low:g}: ctr needs"
                " clicks and non-clicks in each split"
            )
    fields: list[AnyField] = []
    for f in spec.fields:
        fields.append(fitted_field(f, counts, moments, sample, bucket_range, max_size))
    train = labels[0]
    fitted = StreamFit(
        laid_out(fields),
        dict(zip(SPLITS, (int(r) for r in rows), strict=True)),
        train.mean,
        (train.low, train.high),
        time.perf_counter() - started,
    )
    del counts, moments, sample
    return_freed_memory()
    return fitted


def return_freed_memory() -> None:
    """Hand the memory the pass freed back to the system. Arrow's pool keeps freed blocks, and
    glibc's heap the small ones numpy's text columns were made of: about 250 MB after a pass over
    1M criteo-like rows, which would otherwise stay in the process through training (its peak
    RSS is the budget, docs/experiments/streaming.md)."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def fitted_field(
    f: FieldSpec, counts: Mapping[str, ValueCounts], moments: Mapping[str, Moments],
    sample: Mapping[str, Reservoir], bucket_range: Mapping[str, Moments], max_size: int | None,
) -> AnyField:  # fmt: skip
    """One field fitted from the pass's tallies, as FeatureEncoder.fit fits it in memory (its
    offset placed later)."""
    if f.kind == "categorical":
        return CategoricalField.fitted(
            f.name, 0, counts[f.name].most_frequent(f.min_count, max_size)
        )
    if f.kind == "hash":
        common = counts[f.name].most_frequent()[:HASH_EXAMPLES]
        return HashedField(
            name=f.name, kind="hash", offset=0, buckets=f.buckets, common_values=common
        )
    if f.kind == "bucket":
        cut = BucketField.fitted(f.name, 0, sample[f.name].values, f.buckets)
        seen = bucket_range[f.name]
        if not seen.count:
            return cut
        return BucketField(name=f.name, kind="bucket", offset=0, cuts=cut.cuts, min=seen.low,
                           max=seen.high)  # fmt: skip
    m = moments[f.name]
    transform: Literal["none", "log1p"] = "log1p" if f.kind == "log" else "none"
    if not m.count:
        return NumericField(name=f.name, kind="numeric", offset=0, transform=transform, mean=0.0,
                            std=1.0)  # fmt: skip
    std = float(np.sqrt(m.m2 / m.count))
    mean = m.mean if np.isfinite(m.mean) else m.low / 2 + m.high / 2
    return NumericField(
        name=f.name, kind="numeric", offset=0, transform=transform, mean=mean,
        std=std if std > 0 and np.isfinite(std) else 1.0, min=m.low, max=m.high,
    )  # fmt: skip


# --- encoded batches for the trainer --------------------------------------------------------------


@dataclass
class ShuffleBuffer:
    """A bounded shuffle: rows wait in `capacity` slots; once full, each arriving row takes a
    random slot and the row it displaces is emitted."""

    capacity: int
    rng: np.random.Generator
    index: np.ndarray | None = None  # (capacity, F) int64, allocated on the first rows
    value: np.ndarray | None = None  # (capacity, F) float32
    label: np.ndarray | None = None  # (capacity,) float32
    filled: int = 0

    def push(
        self, index: np.ndarray, value: np.ndarray, label: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take rows in; the rows they displace come out (none until the buffer is full)."""
        if self.index is None or self.value is None or self.label is None:
            self.index = np.empty((self.capacity, index.shape[1]), dtype=index.dtype)
            self.value = np.empty((self.capacity, value.shape[1]), dtype=value.dtype)
            self.label = np.empty(self.capacity, dtype=label.dtype)
        room = min(self.capacity - self.filled, len(label))
        end = self.filled + room
        self.index[self.filled : end] = index[:room]
        self.value[self.filled : end] = value[:room]
        self.label[self.filled : end] = label[:room]
        self.filled = end
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start in range(room, len(label), self.capacity):
            stop = min(start + self.capacity, len(label))
            slots = self.rng.choice(self.capacity, size=stop - start, replace=False)
            out.append((self.index[slots], self.value[slots], self.label[slots]))
            self.index[slots] = index[start:stop]
            self.value[slots] = value[start:stop]
            self.label[slots] = label[start:stop]
        if not out:
            return index[:0], value[:0], label[:0]
        return (
            np.concatenate([o[0] for o in out]),
            np.concatenate([o[1] for o in out]),
            np.concatenate([o[2] for o in out]),
        )

    def drain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows left, in random order; the buffer is empty after."""
        assert self.index is not None and self.value is not None and self.label is not None
        order = self.rng.permutation(self.filled)
        self.filled = 0
        return self.index[order], self.value[order], self.label[order]


@dataclass
class Batcher:
    """Rows in, batches of exactly `batch_size` rows out (the last one may be short)."""

    batch_size: int
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    held: int = 0

    def add(self, index: np.ndarray, value: np.ndarray, label: np.ndarray) -> Iterator[Tensors]:
        if len(label):
            self.parts.append((index, value, label))
            self.held += len(label)
        if self.held < self.batch_size:
            return
        index, value, label = (np.concatenate([p[k] for p in self.parts]) for k in range(3))
        full = len(label) - len(label) % self.batch_size
        for start in range(0, full, self.batch_size):
            stop = start + self.batch_size
            yield tensors(index[start:stop], value[start:stop], label[start:stop])
        self.parts = [(index[full:], value[full:], label[full:])] if full < len(label) else []
        self.held = len(label) - full

    def flush(self) -> Iterator[Tensors]:
        if self.held:
            index, value, label = (np.concatenate([p[k] for p in self.parts]) for k in range(3))
            yield tensors(index, value, label)
        self.parts, self.held = [], 0


def tensors(index: np.ndarray, value: np.ndarray, label: np.ndarray) -> Tensors:
    from training.trainer import Tensors

    return Tensors.from_numpy(
        np.ascontiguousarray(index), np.ascontiguousarray(value), np.ascontiguousarray(label)
    )


@dataclass
class StreamSplit:
    """One split of a stream, encoded: what `trainer.fit` and `trainer.evaluate` take."""

    source: StreamSource
    encoder: FeatureEncoder
    split: SplitName
    shuffle_rows: int = SHUFFLE_ROWS
    rows: int | None = None  # this shard's rows of the split; None: counted when first asked

    def __len__(self) -> int:
        if self.rows is None:
            self.rows = self.source.count_rows()[self.split]
        return self.rows

    def batches(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[Tensors]:
        """The split's rows encoded, `batch_size` at a time; shuffled (pieces in a seeded order,
        rows through the buffer) with a seed drawn from `generator`, else in file order."""
        import torch

        pieces = self.source.pieces()
        buffer = None
        if shuffle:
            drawn = torch.randint(0, 2**62, (1,), generator=generator).item()
            rng = np.random.default_rng([self.source.seed, int(drawn)])
            pieces = [pieces[i] for i in rng.permutation(len(pieces))]
            buffer = ShuffleBuffer(self.shuffle_rows, rng)
        batcher = Batcher(batch_size)
        number = SPLITS.index(self.split)
        for batch in self.source.read(pieces, split=number):
            columns, label = batch.columns, batch.label
            if not len(label):
                continue
            encoded = self.encoder.encode(columns)
            rows = (encoded.index, encoded.value, label)
            if buffer is not None:
                rows = buffer.push(*rows)
            yield from batcher.add(*rows)
        if buffer is not None and buffer.filled:
            yield from batcher.add(*buffer.drain())
        yield from batcher.flush()


def stream_record(source: StreamSource, fitted: StreamFit, shuffle_rows: int) -> dict[str, Any]:
    """bundle.json's `data.stream`: how the rows were read."""
    return {
        "files": len(source.files),
        "read_rows": source.read_rows,
        "shuffle_rows": shuffle_rows,
        "vocabulary_seconds": round(fitted.seconds, 3),
        "split": "per row, from a hash of (seed, file name, row number in the file)",
    }
