"""Batch scoring: a CSV or Parquet file (or directory) scored through a bundle's ONNX graph.

Streaming: the input is read a record batch at a time (`ParquetFile.iter_batches`,
`pyarrow.csv.open_csv`), each batch encoded with the bundle's encoder, scored by onnxruntime and
written as one row group of the output Parquet file, so memory holds one batch, never the whole
table. No torch: the fields, their kinds and the encoding come from bundle.json.

Output columns: `row` (the input row number, from 0, across the files in name order), the
`--keep` columns as read, `score`, and with `--explain` the `top_k` pairs of each row by
|contribution|: `top_pair_<i>` ("left,right"), `top_pair_<i>_contribution`,
`top_pair_<i>_attention`. The file is written beside `out` and renamed to it when complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from training.bundle import Bundle
from training.data.checks import (
    DataError,
    delimiter_of,
    header_columns,
    raw_columns,
    require_columns,
)
from training.data.files import PARQUET, source_files

CSV_BLOCK_BYTES = 1 << 20  # CSV read block: a batch never holds more rows than one block


@dataclass
class Summary:
    """What a scoring run did: rows, batches written, unseen values per field."""

    rows: int = 0
    batches: int = 0
    unknown_values: dict[str, int] = field(default_factory=dict)


def record_batches(
    path: Path, columns: list[str], batch_size: int, delimiter: str | None = None
) -> Iterator[tuple[Path, pa.RecordBatch]]:
    """The named columns of every file under `path`, at most `batch_size` rows at a time
    (CSV columns as text)."""
    for file in source_files(path):
        wanted = {name: "a field of the bundle, or --keep" for name in columns}
        if file.stat().st_size == 0:
            raise DataError(f"{file} is empty")
        if file.suffix.lower() in PARQUET:
            try:
                parquet = pq.ParquetFile(file)
            except (pa.ArrowInvalid, OSError) as error:
                raise DataError(f"{file}: not a Parquet file ({error})") from error
            require_columns(file, parquet.schema_arrow.names, wanted)
            for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
                yield file, batch
            continue
        separator = delimiter_of(file, delimiter, columns)
        with open(file, encoding="utf-8-sig", errors="replace", newline="") as text:
            require_columns(file, header_columns(text.readline(), separator), wanted, separator)
        try:
            reader = pacsv.open_csv(
                file,
                read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                parse_options=pacsv.ParseOptions(delimiter=separator),
                convert_options=pacsv.ConvertOptions(
                    include_columns=columns,
                    column_types={name: pa.string() for name in columns},
                    strings_can_be_null=False,
                ),
            )
            for block in reader:
                for start in range(0, block.num_rows, batch_size):
                    yield file, block.slice(start, batch_size)
        except (pa.ArrowInvalid, pa.ArrowKeyError) as error:
            raise DataError(f"{file}: {error}") from error


def feature_columns(bundle: Bundle, file: Path, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
    """Raw values per field as the encoder takes them: text, or float64 with NaN for missing."""
    fields = [(f.name, f.kind) for f in bundle.encoder.fields]
    return raw_columns(file, fields, batch, "numeric field of the bundle")


def score_file(
    bundle: Bundle,
    data: Path,
    out: Path,
    batch_size: int = 8192,
    explain: bool = False,
    top_k: int = 3,
    keep: tuple[str, ...] = (),
    delimiter: str | None = None,
) -> Summary:
    """Score every row of `data` into the Parquet file `out`, one row group per batch."""
    names = bundle.encoder.names
    read = list(dict.fromkeys([*names, *keep]))
    outputs = ["score", "pair_contribution", "attention"] if explain else ["score"]
    top_k = min(top_k, len(bundle.pairs))
    session = bundle.session()
    summary = Summary()
    partial = out.with_name(f".{out.name}.partial")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    try:
        for file, batch in record_batches(data, read, batch_size, delimiter):
            encoded = bundle.encoder.encode(feature_columns(bundle, file, batch))
            results = session.run(
                outputs, {"feature_index": encoded.index, "feature_value": encoded.value}
            )
            n = batch.num_rows
            table: dict[str, pa.Array] = {
                "row": pa.array(np.arange(summary.rows, summary.rows + n, dtype=np.int64))
            }
            for name in keep:
                table[name] = batch.column(name)
            table["score"] = pa.array(np.asarray(results[0], dtype=np.float32))
            if explain:
                table.update(top_pairs(bundle.pairs, results[1], results[2], top_k))
            chunk = pa.table(table)
            if writer is None:
                writer = pq.ParquetWriter(partial, chunk.schema)
            writer.write_table(chunk, row_group_size=n)
            summary.rows += n
            summary.batches += 1
            for name, count in encoded.unseen.items():
                summary.unknown_values[name] = summary.unknown_values.get(name, 0) + count
        if writer is None:
            raise DataError(f"{data} has no rows")
        writer.close()
        os.replace(partial, out)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    return summary


def top_pairs(
    pairs: list[tuple[str, str]], contribution: np.ndarray, attention: np.ndarray, top_k: int
) -> dict[str, pa.Array]:
    """The top_k pairs of each row by |contribution| (ties in pair order), as columns."""
    order = np.argsort(-np.abs(contribution), axis=1, kind="stable")[:, :top_k]  # (N, top_k)
    labels = np.array([f"{left},{right}" for left, right in pairs], dtype=object)
    columns: dict[str, pa.Array] = {}
    for i in range(top_k):
        which = order[:, i : i + 1]
        columns[f"top_pair_{i + 1}"] = pa.array(labels[which[:, 0]], type=pa.string())
        columns[f"top_pair_{i + 1}_contribution"] = pa.array(
            np.take_along_axis(contribution, which, axis=1)[:, 0].astype(np.float32)
        )
        columns[f"top_pair_{i + 1}_attention"] = pa.array(
            np.take_along_axis(attention, which, axis=1)[:, 0].astype(np.float32)
        )
    return columns
