"""`python -m training predict`: a file scored through onnxruntime a batch at a time, the same
scores and pairs as `Bundle.run` (and so the service), one row group per batch, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from tests.service.conftest import ROOT, blocked_torch_env, serving_a_copy
from training import bundle as bundles
from training.bundle.features import CategoricalField
from training.cli import main


def rows_of(bundle: bundles.Bundle, n: int, seed: int = 0) -> pa.Table:
    """n rows of the bundle's fields: known values, a few unseen ones, numbers from 0 to 10."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {"id": [f"r{i}" for i in range(n)]}
    for f in bundle.encoder.fields:
        if isinstance(f, CategoricalField):
            values = np.array([*f.vocabulary, "never-seen"], dtype=object)
            columns[f.name] = values[rng.integers(0, len(values), n)].astype(str)
        else:
            columns[f.name] = rng.uniform(0.0, 10.0, n)
    return pa.table(columns)


def raw_columns(bundle: bundles.Bundle, table: pa.Table) -> dict[str, np.ndarray]:
    return {
        name: table.column(name).to_numpy(zero_copy_only=False) for name in bundle.encoder.names
    }


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> bundles.Bundle:
    return bundles.read(tiny_bundle)


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_predict_scores_and_pairs_equal_the_bundles(
    bundle: bundles.Bundle, tiny_bundle: Path, tmp_path: Path, suffix: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    table = rows_of(bundle, 300)
    data = tmp_path / f"rows.{suffix}"
    if suffix == "parquet":
        pq.write_table(table, data)
    else:
        pacsv.write_csv(table, data)
    out = tmp_path / "scores.parquet"
    main(["predict", "--bundle", str(tiny_bundle), "--data", str(data), "--out", str(out),
          "--explain", "--top-k", "2", "--keep", "id", "--batch-size", "64"])  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == 300 and printed["batches"] == 5
    assert sum(printed["unknown_values"].values()) > 0  # the "never-seen" values
    scored = pq.read_table(out)
    assert scored.column_names == [
        "row", "id", "score",
        "top_pair_1", "top_pair_1_contribution", "top_pair_1_attention",
        "top_pair_2", "top_pair_2_contribution", "top_pair_2_attention",
    ]  # fmt: skip
    assert scored.column("row").to_pylist() == list(range(300))
    assert scored.column("id").to_pylist() == table.column("id").to_pylist()
    want = bundle.run(raw_columns(bundle, table), ["score", "pair_contribution"])
    np.testing.assert_allclose(scored.column("score").to_numpy(), want["score"], atol=1e-6)
    contribution = want["pair_contribution"]
    first = np.argmax(np.abs(contribution), axis=1)
    labels = [",".join(bundle.pairs[p]) for p in first]
    assert scored.column("top_pair_1").to_pylist() == labels
    np.testing.assert_allclose(
        scored.column("top_pair_1_contribution").to_numpy(),
        contribution[np.arange(300), first],
        atol=1e-6,
    )


def test_predict_streams_a_file_one_row_group_per_batch_without_a_whole_table_read(
    bundle: bundles.Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import predict

    data = tmp_path / "rows.parquet"
    pq.write_table(rows_of(bundle, 1000, seed=1), data, row_group_size=1000)

    def whole_table(*args: object, **kwargs: object) -> None:
        raise AssertionError("read the whole table")

    monkeypatch.setattr(pq, "read_table", whole_table)
    monkeypatch.setattr(pacsv, "read_csv", whole_table)
    seen: list[int] = []
    batches = predict.record_batches

    def counted(*args: Any, **kwargs: Any) -> Iterator[tuple[Path, pa.RecordBatch]]:
        for file, batch in batches(*args, **kwargs):
            seen.append(batch.num_rows)
            yield file, batch

    monkeypatch.setattr(predict, "record_batches", counted)
    out = tmp_path / "scores.parquet"
    summary = predict.score_file(bundle, data, out, batch_size=100)
    assert summary.rows == 1000 and summary.batches == 10
    assert seen == [100] * 10  # never more than a batch in memory
    metadata = pq.ParquetFile(out).metadata
    assert metadata.num_row_groups == 10 and metadata.num_rows == 1000


def test_predict_reads_a_directory_in_name_order_and_counts_rows_across_files(
    bundle: bundles.Bundle, tiny_bundle: Path, tmp_path: Path
) -> None:
    from training import predict

    folder = tmp_path / "logs"
    folder.mkdir()
    first, second = rows_of(bundle, 150, seed=2), rows_of(bundle, 70, seed=3)
    pacsv.write_csv(first, folder / "a.csv")
    pacsv.write_csv(second, folder / "b.csv")
    out = tmp_path / "scores.parquet"
    summary = predict.score_file(bundle, folder, out, batch_size=100, keep=("id",))
    assert summary.batches == 3  # 100 and 50 rows from a.csv, 70 from b.csv
    scored = pq.read_table(out)
    assert scored.column("row").to_pylist() == list(range(220))
    both = pa.concat_tables([first, second])
    np.testing.assert_allclose(
        scored.column("score").to_numpy(), bundle.score(raw_columns(bundle, both)), atol=1e-6
    )


def test_predict_names_a_missing_field_and_leaves_no_output(
    bundle: bundles.Bundle, tiny_bundle: Path, tmp_path: Path
) -> None:
    data = tmp_path / "rows.parquet"
    pq.write_table(rows_of(bundle, 10).drop_columns(["city"]), data)
    out = tmp_path / "scores.parquet"
    with pytest.raises(SystemExit, match="no column 'city'"):
        main(["predict", "--bundle", str(tiny_bundle), "--data", str(data), "--out", str(out)])
    assert list(tmp_path.iterdir()) == [data]


def test_predict_runs_without_torch(
    bundle: bundles.Bundle, tiny_bundle: Path, tmp_path: Path
) -> None:
    data = tmp_path / "rows.csv"
    pacsv.write_csv(rows_of(bundle, 50), data)
    out = tmp_path / "scores.parquet"
    done = subprocess.run(
        [sys.executable, "-m", "training", "predict", "--bundle", str(tiny_bundle),
         "--data", str(data), "--out", str(out), "--explain"],
        env=blocked_torch_env(tmp_path / "shim"), cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 50 and pq.read_table(out).num_rows == 50


def test_predict_scores_equal_the_served_scores_of_the_same_rows(
    bundle: bundles.Bundle, tiny_bundle: Path, models_dir: Path, tmp_path: Path
) -> None:
    table = rows_of(bundle, 300, seed=4)  # unseen values among them: both use the OOV rows
    data = tmp_path / "rows.csv"
    pacsv.write_csv(table, data)  # read back as text, as a team's export is
    out = tmp_path / "scores.parquet"
    main(["predict", "--bundle", str(tiny_bundle), "--data", str(data), "--out", str(out),
          "--batch-size", "128"])  # fmt: skip
    rows = table.select(bundle.encoder.names).to_pylist()
    served: list[float] = []
    with serving_a_copy(models_dir, tmp_path) as server, server.client() as afm:
        for start in range(0, len(rows), 100):
            answer = afm.predict(rows[start : start + 100])
            assert answer["model"] == {"name": "synthetic-afm", "version": 1}
            served += answer["scores"]
    scored = pq.read_table(out).column("score").to_numpy()
    assert len(served) == len(scored) == 300 and np.ptp(scored) > 0.01
    np.testing.assert_allclose(scored, served, rtol=0, atol=1e-6)
