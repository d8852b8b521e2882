"""Numeric fields as CTR practice treats them, trained on a team's own log: clipped
standardisation (`:numeric`), log1p (`:log`) and quantile buckets (`:bucket:N`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.training.test_bad_files import clicks, write_csv
from training import bundle
from training.bundle.features import BucketField, NumericField
from training.cli import main
from training.data.checks import DataError, parse_fields


def test_log_and_bucket_fields_train_publish_and_evaluate(tmp_path, capsys):
    log = clicks(rows=400)
    log["hour"][:5] = [""] * 5  # missing hours take the bucket field's missing slot
    data = write_csv(tmp_path / "clicks.csv", log)
    models = tmp_path / "models"
    main(["train", "--quick", "--threads", "1", "--out", str(models), "--data", str(data),
          "--label", "clicked", "--name", "kinds", "--seed", "1",
          "--fields", "user,item,hour:bucket:4,device,price:log,ts:numeric"])  # fmt: skip
    published = bundle.read(models / "kinds" / "1")
    fields = {f.name: f for f in published.manifest.fields}
    hour, price, ts = fields["hour"], fields["price"], fields["ts"]
    assert isinstance(hour, BucketField) and isinstance(price, NumericField)
    assert isinstance(ts, NumericField)
    train_rows = published.manifest.data.rows.train if published.manifest.data else 0
    assert train_rows == 320
    assert hour.buckets == 4 and hour.size == 5 and hour.min == 0.0 and hour.max == 23.0
    assert price.transform == "log1p" and ts.transform == "none"
    prices = np.array([float(v) for v in log["price"]])
    assert price.min is not None and price.max is not None
    assert math.log1p(prices.min()) <= price.min <= price.max <= math.log1p(prices.max())
    assert published.manifest.num_features == sum(f.size for f in published.manifest.fields)
    written = json.loads((published.path / "bundle.json").read_text())
    assert {f["name"]: f["kind"] for f in written["fields"]}["hour"] == "bucket"
    capsys.readouterr()
    main(["evaluate", "--bundle", str(published.path), "--data", str(data), "--split", "test"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert published.manifest.metrics is not None
    assert printed["rows"] == 40
    assert printed["auc"] == pytest.approx(published.manifest.metrics.test["auc"], abs=1e-4)


def test_a_bucket_field_with_text_values_is_refused_before_training(tmp_path):
    log = clicks(rows=200)
    log["hour"][3] = "noon"
    data = write_csv(tmp_path / "clicks.csv", log)
    with pytest.raises(SystemExit) as stopped:
        main(["train", "--quick", "--out", str(tmp_path / "models"), "--data", str(data),
              "--label", "clicked", "--fields", "user,hour:bucket:4"])  # fmt: skip
    message = str(stopped.value.code)
    assert "'hour'" in message and "not numbers" in message and "noon" in message


@pytest.mark.parametrize(
    ("text", "kinds"),
    [
        ("user,price:log", [("user", "categorical"), ("price", "log")]),
        ("hour:bucket:4,price:numeric", [("hour", "bucket"), ("price", "numeric")]),
    ],
)
def test_fields_option_reads_number_kinds(text: str, kinds: list[tuple[str, str]]) -> None:
    spec = parse_fields(text, "clicked")
    assert [(f.name, f.kind) for f in spec.fields] == kinds


def test_fields_option_refuses_one_bucket(tmp_path) -> None:
    with pytest.raises(DataError, match="the number of buckets must be a whole number >= 2"):
        parse_fields("user,hour:bucket:1", "clicked")
