"""Streaming input (training/data/stream.py): the per-row split, the shuffle buffer, shards, the
one-pass vocabularies against the in-memory fit, and `train --stream` end to end through the real
service."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from tests.service.conftest import serving_a_copy
from training import bundle as bundles
from training.bundle.features import FeatureEncoder, FeatureSpec
from training.cli import parse_args, train_options
from training.commands import train
from training.data import files, stream
from training.data.stream import (
    Batcher,
    ShuffleBuffer,
    StreamSource,
    StreamSplit,
    capped,
    fit_vocabularies,
    row_splits,
    with_min_count,
)

FRACTIONS = (0.7, 0.2, 0.1)
SPEC = FeatureSpec.parse("id,city,user:hash:64,age:numeric,spend:log,hour:bucket:4")


def write_rows(folder: Path, files_rows: list[int], row_group_rows: int, seed: int = 0) -> None:
    """Parquet files of `files_rows` rows each: a unique `id`, skewed `city` values with ties,
    numbers with gaps, a 0/1 label."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    start = 0
    for number, rows in enumerate(files_rows):
        ids = np.arange(start, start + rows)
        start += rows
        city = rng.zipf(1.6, rows).clip(max=40)
        age = rng.normal(40, 12, rows)
        age[rng.random(rows) < 0.1] = np.nan
        table = pa.table(
            {
                "id": [f"row{i}" for i in ids],
                "city": [f"c{c}" if c != 7 else None for c in city],
                "user": [f"u{u}" for u in rng.integers(0, 300, rows)],
                "age": pa.array(age, mask=np.isnan(age)),
                "spend": rng.exponential(20, rows) - 2,
                "hour": rng.integers(0, 24, rows).astype(float),
                "label": (rng.random(rows) < 0.3).astype(np.int8),
            }
        )
        pq.write_table(table, folder / f"part-{number}.parquet", row_group_size=row_group_rows)


def ids_by_split(source: StreamSource) -> list[set[str]]:
    found: list[set[str]] = [set(), set(), set()]
    for batch in source.read():
        for split in range(3):
            found[split].update(batch.columns["id"][batch.split == split].tolist())
    return found


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stream") / "rows"
    write_rows(folder, [1_500, 700, 1_100], row_group_rows=300)
    return folder


def source_of(folder: Path, **options: object) -> StreamSource:
    return StreamSource(stream.stream_files(folder), SPEC, "ctr", FRACTIONS, 3, **options)  # type: ignore[arg-type]


def test_split_of_a_row_is_seeded_and_near_the_fractions() -> None:
    splits = row_splits(Path("a.parquet"), 0, 200_000, seed=1, fractions=FRACTIONS)
    shares = np.bincount(splits, minlength=3) / len(splits)
    np.testing.assert_allclose(shares, FRACTIONS, atol=0.006)  # about 5 standard deviations
    again = row_splits(Path("a.parquet"), 0, 200_000, seed=1, fractions=FRACTIONS)
    np.testing.assert_array_equal(splits, again)
    tail = row_splits(Path("a.parquet"), 150_000, 50_000, seed=1, fractions=FRACTIONS)
    np.testing.assert_array_equal(splits[150_000:], tail)  # a row's split ignores where reads start
    assert (row_splits(Path("a.parquet"), 0, 1000, 2, FRACTIONS) != splits[:1000]).any()
    assert (row_splits(Path("b.parquet"), 0, 1000, 1, FRACTIONS) != splits[:1000]).any()


def test_split_does_not_depend_on_record_batches_or_row_groups(data: Path) -> None:
    small = ids_by_split(source_of(data, read_rows=97))
    large = ids_by_split(source_of(data, read_rows=4096))
    by_groups = [set[str]().union(*parts) for parts in zip(
        *(ids_by_split(source_of(data).shard(r, 5)) for r in range(5)), strict=True
    )]  # fmt: skip
    assert small == large == by_groups
    assert sum(len(s) for s in small) == 3_300
    assert small[0] and small[1] and small[2]


@pytest.mark.parametrize("world_size", [2, 3, 7])
def test_shards_partition_the_rows_exactly(data: Path, world_size: int) -> None:
    """Whole files when there are as many files as ranks (2, 3), row groups when fewer (7)."""
    source = source_of(data, read_rows=256)
    everyone = set[str]().union(*ids_by_split(source))
    seen: list[str] = []
    for rank in range(world_size):
        part = source.shard(rank, world_size)
        ids = set[str]().union(*ids_by_split(part))
        assert ids, f"rank {rank} of {world_size} reads nothing"
        seen.extend(ids)
        counted = part.count_rows()
        assert sum(counted.values()) == len(ids)
    assert len(seen) == len(set(seen)) == len(everyone)
    assert set(seen) == everyone


def test_shards_of_csv_files_need_a_file_per_rank(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,label\nx,1\ny,0\n")
    spec = FeatureSpec.parse("id")
    source = StreamSource((tmp_path / "a.csv",), spec, "ctr").shard(1, 2)
    with pytest.raises(ValueError, match="at least one file per rank"):
        source.pieces()


def test_shuffle_buffer_holds_at_most_its_rows_and_repeats_with_its_seed() -> None:
    capacity, rows = 50, 1_000
    ids = np.arange(rows)

    def order(seed: int) -> np.ndarray:
        buffer = ShuffleBuffer(capacity, np.random.default_rng(seed))
        out = []
        for start in range(0, rows, 37):  # arriving in record batches of 37 rows
            chunk = ids[start : start + 37]
            emitted = buffer.push(chunk[:, None], chunk[:, None].astype(np.float32), chunk)
            out.append(emitted[2])
            assert buffer.filled <= capacity and len(buffer.label) == capacity  # type: ignore[arg-type]
        out.append(buffer.drain()[2])
        return np.concatenate(out)

    first = order(1)
    assert sorted(first.tolist()) == ids.tolist()  # every row once
    place = np.empty(rows, dtype=int)
    place[first] = np.arange(rows)
    assert (place >= ids - capacity).all()  # no row leaves before it was read, less the buffer
    assert (np.abs(place - ids) > 5).mean() > 0.5  # and the rows are moved, not left in order
    np.testing.assert_array_equal(order(1), first)
    assert (order(2) != first).any()


def test_batcher_cuts_exact_batches_and_a_short_last_one() -> None:
    batcher = Batcher(64)
    sizes = []
    for n in (10, 100, 30, 3):
        rows = np.zeros((n, 2), dtype=np.int64)
        sizes += [len(b) for b in batcher.add(rows, rows.astype(np.float32), np.zeros(n))]
    sizes += [len(b) for b in batcher.flush()]
    assert sizes == [64, 64, 15]


def test_training_epochs_shuffle_differently_and_repeat_with_the_seed(data: Path) -> None:
    source = source_of(data, read_rows=200)
    fitted = fit_vocabularies(source)
    split = StreamSplit(source, fitted.encoder, "train", shuffle_rows=300)
    id_slot = {index: value for value, index in fitted.encoder.categorical("id").vocabulary.items()}

    def epochs(seed: int) -> list[list[str]]:
        generator = torch.Generator().manual_seed(seed)
        return [
            [id_slot[int(i)] for b in split.batches(128, True, generator) for i in b.index[:, 0]]
            for _ in range(2)
        ]

    first, second = epochs(0)
    in_order = [id_slot[int(i)] for b in split.batches(128, False) for i in b.index[:, 0]]
    assert sorted(first) == sorted(second) == sorted(in_order)
    assert len(first) == len(split) == fitted.rows["train"]
    assert first != second and first != in_order
    assert epochs(0) == [first, second]


def test_stream_vocabularies_equal_the_in_memory_fit(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "MERGE_ROWS", 50)  # merge the counts many times over
    spec = FeatureSpec.parse("city:categorical:3,user:hash:64,age:numeric,spend:log,hour:bucket:4")
    source = StreamSource(stream.stream_files(data), spec, "ctr", FRACTIONS, 3, read_rows=128)
    fitted = fit_vocabularies(source, min_count=2, max_size=12)

    table, _, paths = files.read_source("ctr", spec, data)
    train = np.concatenate([
        row_splits(p, 0, pq.read_metadata(p).num_rows, 3, FRACTIONS) == 0 for p in paths
    ])  # fmt: skip
    rows = table.take(train)
    expected = capped(FeatureEncoder.fit(with_min_count(spec, 2), rows.columns), 12)

    city = fitted.encoder.categorical("city")
    assert len(city.vocabulary) == 12  # capped: more than 12 cities are seen 3 times or more
    assert list(city.vocabulary.items()) == list(expected.categorical("city").vocabulary.items())
    for got, want in zip(fitted.encoder.fields, expected.fields, strict=True):
        assert got.offset == want.offset
        if got.kind == "numeric":
            assert got.model_dump() == pytest.approx(want.model_dump(), rel=1e-9)
        else:
            assert got.model_dump() == want.model_dump()
    assert fitted.encoder.num_features == expected.num_features
    assert fitted.rows["train"] == int(train.sum())
    assert fitted.label_mean == pytest.approx(float(rows.label.mean()))


def train_argv(data: Path, models: Path, *extra: str) -> list[str]:
    return [
        "train", "--stream", "--data", str(data), "--fields",
        "city,user:hash:64,age:numeric,spend:log,hour:bucket:4", "--epochs", "2",
        "--embedding-dim", "4", "--attention-dim", "4", "--threads", "1", "--batch-size", "256",
        "--shuffle-rows", "500", "--split", "0.7,0.2,0.1", "--seed", "3", "--name", "streamed",
        "--out", str(models), *extra,
    ]  # fmt: skip


def test_stream_training_publishes_a_bundle_the_service_scores(data: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    path = train(train_options(parse_args(train_argv(data, models, "--sparse-embeddings"))))
    manifest = bundles.read(path).manifest
    assert manifest.data is not None and manifest.data.stream is not None
    assert manifest.data.stream.shuffle_rows == 500
    counted = source_of(data).count_rows()
    assert manifest.data.rows.model_dump() == counted
    assert manifest.training_config is not None and manifest.training_config.sparse_embeddings
    assert len(manifest.history or []) == 2

    rows = pq.read_table(data / "part-1.parquet").slice(0, 5).to_pylist()
    instances = [{k: v for k, v in r.items() if k not in ("id", "label")} for r in rows]
    expected = bundles.read(path).score(
        {n: np.asarray([r[n] if r[n] is not None else np.nan for r in instances])
         if n != "city" and n != "user" else np.asarray([r[n] or "" for r in instances])
         for n in manifest.encoder.names}
    )  # fmt: skip
    with serving_a_copy(models, tmp_path / "server") as server:
        response = httpx.post(f"{server.url}/predict", json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert len(scores) == 5 and all(0 < s < 1 for s in scores)
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_stream_refuses_split_by_with_a_reason(data: Path, tmp_path: Path) -> None:
    argv = train_argv(data, tmp_path, "--split-by", "hour")
    argv.remove("--split")
    argv.remove("0.7,0.2,0.1")
    with pytest.raises(SystemExit, match="--split-by orders every row"):
        train(train_options(parse_args(argv)))


def test_max_vocabulary_and_min_count_cap_the_in_memory_fit_too(data: Path, tmp_path: Path) -> None:
    argv = [
        "train", "--data", str(data), "--fields", "city,user:hash:64", "--epochs", "1",
        "--embedding-dim", "4", "--attention-dim", "4", "--threads", "1",
        "--max-vocabulary", "5", "--min-count", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    path = train(train_options(parse_args(argv)))
    fields = json.loads((path / "bundle.json").read_text())["fields"]
    assert len(fields[0]["vocabulary"]) == 5
    assert fields[1]["offset"] == 6  # the hashed block follows the capped one


def test_parquet_is_read_one_batch_ahead_without_buffering_the_file(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow's defaults (16 batches decoded ahead, 4 files, column chunks buffered) held 514 MB
    of arrow memory reading one 1.25M-row criteo-like file, against 109 MB as the stream reads
    (docs/experiments/streaming.md): the options reach every fragment read, whole or a row group."""
    asked: list[dict[str, object]] = []

    class Watched:
        def __init__(self, fragment: object) -> None:
            self.fragment = fragment

        def subset(self, **options: object) -> Watched:
            return Watched(self.fragment.subset(**options))  # type: ignore[attr-defined]

        def to_batches(self, **options: object) -> object:
            asked.append(options)
            return self.fragment.to_batches(**options)  # type: ignore[attr-defined]

    class WatchedDataset:
        def __init__(self, dataset: object) -> None:
            self.dataset = dataset

        def get_fragments(self) -> Iterator[Watched]:
            return (Watched(f) for f in self.dataset.get_fragments())  # type: ignore[attr-defined]

    real = StreamSource.dataset
    monkeypatch.setattr(
        StreamSource, "dataset", lambda self, path: WatchedDataset(real(self, path))
    )
    whole = sum(len(b.label) for b in source_of(data).read())
    groups = sum(len(b.label) for b in source_of(data).shard(0, 5).read())
    assert whole == 3_300 and 0 < groups < whole
    assert len(asked) == 3 + len(source_of(data).shard(0, 5).pieces())
    for options in asked:
        assert options["batch_readahead"] == stream.READ_AHEAD == 1
        assert options["fragment_readahead"] == 0
        scan = options["fragment_scan_options"]
        assert isinstance(scan, ds.ParquetFragmentScanOptions) and scan.pre_buffer is False


def test_reading_one_split_yields_its_rows_alone_in_order(data: Path) -> None:
    source = source_of(data, read_rows=256)
    for split in range(3):
        whole = [
            i for b in source.read() for i in b.columns["id"][b.split == split].tolist()
        ]  # fmt: skip
        batches = list(source.read(split=split))
        assert all((b.split == split).all() for b in batches)
        assert [i for b in batches for i in b.columns["id"].tolist()] == whole
        labels = np.concatenate([b.label for b in batches])
        assert len(labels) == len(whole) == source.count_rows()[stream.SPLITS[split]]
