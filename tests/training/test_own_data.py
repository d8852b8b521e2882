"""A team's own log end to end: one file or directory, split here, trained, evaluated."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.training.test_bad_files import FIELDS, changed, clicks, write_csv
from training import bundle
from training.bundle.features import FeatureSpec, FieldSpec
from training.cli import main
from training.commands import auto_batch_size, summary
from training.data import files
from training.data.splits import SplitPlan
from training.trainer import History


def yes_no(rows: int = 400) -> dict[str, list[str]]:
    return changed("clicked", lambda i, v: "yes" if v == "1" else "no", rows=rows)


def train(tmp_path, *options: str) -> bundle.Bundle:
    models = tmp_path / "models"
    main(["train", "--quick", "--threads", "1", "--out", str(models), "--fields", FIELDS,
          "--label", "clicked", "--name", "own", *options])  # fmt: skip
    return bundle.read(sorted((models / "own").iterdir())[-1])


def test_one_file_is_split_for_you_and_the_bundle_says_how(tmp_path, capsys):
    data = write_csv(tmp_path / "clicks.csv", yes_no(), delimiter=";")  # delimiter found by itself
    published = train(tmp_path, "--data", str(data), "--positive-label", "yes", "--seed", "3")
    info = published.manifest.data
    assert info is not None and info.dataset == "files"
    assert info.split is not None and info.split.method == "random"
    assert info.split.fractions == (0.8, 0.1, 0.1) and info.split.seed == 3
    assert (info.rows.train, info.rows.validation, info.rows.test) == (320, 40, 40)
    assert (info.label, info.positive_label) == ("clicked", "yes")
    out = capsys.readouterr().out
    assert "summary: best epoch 1 of 1" in out and f"bundle: {published.path}" in out


def test_split_by_a_column_tests_the_latest_rows(tmp_path):
    data = clicks(rows=300)
    order = np.random.default_rng(0).permutation(300)  # the file is not in time order
    shuffled = {k: [v[i] for i in order] for k, v in data.items()}
    spec = FeatureSpec((FieldSpec("ts", "numeric"), FieldSpec("user")), "clicked")
    table, key, _ = files.read_source(
        "ctr", spec, write_csv(tmp_path / "log.csv", shuffled), order_by="ts"
    )
    assert key is not None
    plan = SplitPlan("by_column", (0.6, 0.2, 0.2), column="ts")
    train, validation, test = files.split_table(table, key, plan)
    assert (len(train), len(validation), len(test)) == (180, 60, 60)
    assert train.columns["ts"].max() < validation.columns["ts"].min()
    assert validation.columns["ts"].max() < test.columns["ts"].min()


def test_the_fingerprint_covers_how_the_rows_were_split(tmp_path):
    path = write_csv(tmp_path / "clicks.csv", clicks(rows=300))
    spec = FeatureSpec((FieldSpec("user"), FieldSpec("item")), "clicked")

    def fingerprint(plan: SplitPlan) -> str:
        return files.load_source("ctr", spec, path, plan).fingerprint

    random0 = fingerprint(SplitPlan("random", (0.8, 0.1, 0.1), seed=0))
    assert random0 == fingerprint(SplitPlan("random", (0.8, 0.1, 0.1), seed=0))
    others = {
        fingerprint(SplitPlan("random", (0.8, 0.1, 0.1), seed=1)),
        fingerprint(SplitPlan("random", (0.7, 0.15, 0.15), seed=0)),
        fingerprint(SplitPlan("by_column", (0.8, 0.1, 0.1), column="ts")),
    }
    assert random0 not in others and len(others) == 3


def test_a_directory_of_files_reads_as_one_table(tmp_path):
    whole = clicks(rows=300)
    (tmp_path / "logs").mkdir()
    for part, rows in (("a", slice(0, 100)), ("b", slice(100, 300))):
        write_csv(tmp_path / "logs" / f"{part}.csv", {k: v[rows] for k, v in whole.items()})
    (tmp_path / "logs" / "README.md").write_text("not data")  # other files are left alone
    spec = FeatureSpec((FieldSpec("user"), FieldSpec("price", "numeric")), "clicked")
    table, _, paths = files.read_source("ctr", spec, tmp_path / "logs")
    one, _, _ = files.read_source("ctr", spec, write_csv(tmp_path / "all.csv", whole))
    assert [p.name for p in paths] == ["a.csv", "b.csv"]
    assert np.array_equal(table.columns["user"], one.columns["user"])
    assert np.array_equal(table.label, one.label)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (pa.array([True, False, True]), [1, 0, 1]),
        (pa.array(["true", "False", "TRUE"]), [1, 0, 1]),
        (pa.array([1, 0, 1]), [1, 0, 1]),
        (pa.array(["1.0", "0", "1"]), [1, 0, 1]),
    ],
)
def test_ctr_takes_0_1_and_booleans(values, expected, tmp_path):
    from training.data.checks import label_values

    assert label_values(tmp_path, "clicked", values, "ctr", None).tolist() == expected


def test_a_positive_label_of_a_numeric_column_matches_its_number(tmp_path):
    from training.data.checks import label_values

    values = pa.array([2.0, 0.0, 2.0])
    assert label_values(tmp_path, "clicked", values, "ctr", "2").tolist() == [1, 0, 1]


def test_a_parquet_log_with_boolean_clicks_trains(tmp_path):
    data: dict[str, object] = dict(clicks(rows=300))
    data["clicked"] = [v == "1" for v in clicks(rows=300)["clicked"]]
    data["price"] = [float(v) for v in clicks(rows=300)["price"]]
    pq.write_table(pa.table(data), tmp_path / "clicks.parquet")
    published = train(tmp_path, "--data", str(tmp_path / "clicks.parquet"), "--split-by", "ts")
    assert published.manifest.data is not None and published.manifest.data.split is not None
    assert published.manifest.data.split.column == "ts"


def test_a_categorical_with_one_value_per_row_is_warned_about(tmp_path, capsys):
    spec = FeatureSpec((FieldSpec("user"), FieldSpec("ts")), "clicked")  # ts: one per row
    files.load_source("ctr", spec, write_csv(tmp_path / "c.csv", clicks(rows=300)),
                      SplitPlan("random", (0.8, 0.1, 0.1), seed=0))  # fmt: skip
    err = capsys.readouterr().err
    assert "warning:" in err and "'ts'" in err and "declare it ts:numeric" in err
    assert "'user'" not in err


def test_the_batch_size_gives_small_data_enough_steps():
    assert auto_batch_size(1_400) == 70  # 20 steps, not the 2 of a batch of 1024
    assert auto_batch_size(48_000) == 1024
    assert auto_batch_size(100) == 16


def test_the_batch_size_used_is_recorded(tmp_path, capsys):
    data = write_csv(tmp_path / "clicks.csv", clicks(rows=500))
    published = train(tmp_path, "--data", str(data))
    config = published.manifest.training_config
    assert config is not None and config.batch_size == 20  # 400 training rows / 20
    assert "batch size 20: 20 steps per epoch over 400 training rows" in capsys.readouterr().out
    again = train(tmp_path, "--data", str(data), "--batch-size", "64")
    assert again.manifest.training_config is not None
    assert again.manifest.training_config.batch_size == 64


def history(best_epoch: int, epochs: int) -> History:
    return History(
        epochs=[{"epoch": e, "valid_auc": 0.5 + e / 100} for e in range(1, epochs + 1)],
        best_epoch=best_epoch,
        best={"auc": 0.6},
    )


@pytest.mark.parametrize(
    ("best", "ran", "cap", "said"),
    [
        (4, 7, 20, "stopped early: no better valid auc for 3 epochs"),
        (20, 20, 20, "while valid auc was still improving: more --epochs or a higher --lr"),
        (12, 20, 20, "valid auc last improved at epoch 12"),
    ],
)
def test_the_summary_says_why_training_stopped(best, ran, cap, said, tmp_path):
    text = summary(history(best, ran), cap, 3, "auc", {"auc": 0.61}, tmp_path, False)
    assert f"best epoch {best} of {ran}" in text and said in text
    assert "test: auc 0.6100" in text and f"bundle: {tmp_path}" in text


def test_evaluate_reads_fields_label_and_split_from_the_bundle(tmp_path, capsys):
    data = write_csv(tmp_path / "clicks.csv", yes_no())
    published = train(tmp_path, "--data", str(data), "--positive-label", "yes")
    capsys.readouterr()
    main(["evaluate", "--bundle", str(published.path), "--data", str(data), "--split", "test"])
    captured = capsys.readouterr()
    printed = json.loads(captured.out.strip().splitlines()[-1])
    assert published.manifest.metrics is not None
    assert printed["rows"] == 40 and "trained on other data" not in captured.err
    assert printed["auc"] == pytest.approx(published.manifest.metrics.test["auc"], abs=1e-4)
    main(["evaluate", "--bundle", str(published.path), "--data", str(data)])  # every row
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["rows"] == 400
    assert "is the data" in captured.err  # its training rows are among those scored
    fresh = write_csv(tmp_path / "next-week.csv", yes_no(rows=100))
    main(["evaluate", "--bundle", str(published.path), "--data", str(fresh)])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["rows"] == 100 and printed["split"] == "all"


def test_evaluate_on_own_data_runs_without_torch(tmp_path):
    data = write_csv(tmp_path / "clicks.csv", yes_no())
    published = train(tmp_path, "--data", str(data), "--positive-label", "yes")
    check = (
        "import sys; from training.cli import main;"
        f" main(['evaluate', '--bundle', {str(published.path)!r}, '--data', {str(data)!r}]);"
        " assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["data"] == str(data)
