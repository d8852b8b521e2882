"""`train --warm-start`: a published model continued on later rows with new users and items keeps
every learned row (at its new index), scores the new values through rows of their own and records
its parent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from tests.conftest import train_tiny
from training import bundle as bundles
from training import warm_start
from training.bundle.features import FeatureEncoder, FeatureSpec
from training.data.synthetic import CLICK_FIELDS, click_log
from training.export import load_checkpoint
from training.readers import read_table


def logs(path: Path, users: int, items: int, rows: int, seed: int) -> Path:
    """A day of logs: users u0.., items i0.., a price, clicks that depend on user and item."""
    rng = np.random.default_rng(seed)
    user, item = rng.integers(0, users, rows), rng.integers(0, items, rows)
    click = (rng.random(rows) < 0.2 + 0.6 * ((user + item) % 3 == 0)).astype(int)
    table = pa.table({
        "user": [f"u{u}" for u in user], "item": [f"i{i}" for i in item],
        "price": rng.uniform(1, 20, rows), "label": click,
    })  # fmt: skip
    pacsv.write_csv(table, path)
    return path


@pytest.fixture(scope="module")
def days(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Yesterday's model (logs-afm/1) and today's logs, with 20 new users and 10 new items."""
    root = tmp_path_factory.mktemp("warm")
    yesterday = logs(root / "yesterday.csv", 30, 20, 1500, seed=0)
    today = logs(root / "today.csv", 50, 30, 1500, seed=1)
    models = root / "models"
    train_tiny(models, "--data", str(yesterday), "--fields", "user,item,price:numeric",
               "--name", "logs-afm")  # fmt: skip
    return models, models / "logs-afm" / "1", today


def test_grown_encoder_keeps_the_parents_values_and_appends_the_new_ones(
    days: tuple[Path, Path, Path],
) -> None:
    _, parent_path, today = days
    parent = bundles.read(parent_path)
    spec = FeatureSpec.parse("user,item,price:numeric")
    fitted = FeatureEncoder.fit(spec, read_table(today, spec).columns)
    grown = warm_start.grow_encoder(parent.encoder, fitted)
    assert grown.added == {"user": 20, "item": 10}
    for old, new in zip(parent.encoder.fields, grown.encoder.fields, strict=True):
        assert grown.rows[old.offset] == new.offset
        if old.kind == "categorical":
            shift = new.offset - old.offset
            assert all(new.vocabulary[v] == i + shift for v, i in old.vocabulary.items())  # type: ignore[union-attr]
        else:
            assert new.model_dump() == {**old.model_dump(), "offset": new.offset}  # transform kept
    assert grown.encoder.num_features == parent.encoder.num_features + 30
    assert np.array_equal(grown.sources[grown.rows], np.arange(parent.encoder.num_features))


def test_the_started_model_keeps_every_parent_weight_and_predicts_as_the_parent(
    days: tuple[Path, Path, Path],
) -> None:
    _, parent_path, today = days
    parent = bundles.read(parent_path)
    spec = FeatureSpec.parse("user,item,price:numeric")
    columns = read_table(today, spec).columns
    grown = warm_start.grow_encoder(parent.encoder, FeatureEncoder.fit(spec, columns))
    before = load_checkpoint(parent_path)
    model = warm_start.start_model(before, grown, dropout=0.0)
    rows = torch.from_numpy(grown.rows)
    for table in ("embedding", "linear"):
        old, new = getattr(before, table).weight, getattr(model, table).weight
        assert torch.equal(new[rows], old)
        user = grown.encoder.categorical("user")
        fresh = [
            i
            for v, i in user.vocabulary.items()
            if v not in parent.encoder.categorical("user").vocabulary
        ]
        assert torch.equal(
            new[fresh], old[parent.encoder.categorical("user").offset].expand(len(fresh), -1)
        )
    for key, value in before.state_dict().items():
        if key not in warm_start.GROWN:
            assert torch.equal(model.state_dict()[key], value), key
    # today's rows, new values included, score as the parent scored them (new values were OOV)
    model.eval(), before.eval()
    was, now = parent.encoder.encode(columns), grown.encoder.encode(columns)
    assert sum(was.unseen.values()) > 0 and sum(now.unseen.values()) == 0
    with torch.no_grad():
        a = before(torch.from_numpy(was.index), torch.from_numpy(was.value)).raw
        b = model(torch.from_numpy(now.index), torch.from_numpy(now.value)).raw
    torch.testing.assert_close(a, b)


def test_warm_start_publishes_the_next_version_scoring_new_values_and_naming_its_parent(
    days: tuple[Path, Path, Path],
) -> None:
    models, parent_path, today = days
    path = train_tiny(models, "--data", str(today), "--warm-start", str(parent_path))
    assert path == models / "logs-afm" / "2"
    child, parent = bundles.read(path), bundles.read(parent_path)
    config = child.manifest.training_config
    assert config is not None and config.parent is not None
    assert config.parent.model_dump() == {
        "name": "logs-afm", "version": 1, "sha256": parent.manifest.sha256,
    }  # fmt: skip
    grown, was = child.manifest.network, parent.manifest.network
    assert grown is not None and was is not None
    assert grown.embedding_dim == was.embedding_dim and grown.attention_dim == was.attention_dim
    assert grown.num_features == was.num_features + 30
    encoded = child.encoder.encode({"user": ["u45"], "item": ["i25"], "price": [3.0]})
    assert encoded.unseen == {"user": 0, "item": 0}
    assert encoded.index[0, 0] != child.encoder.categorical("user").offset  # its own row, not OOV
    manifest = json.loads((path / "bundle.json").read_text())
    assert manifest["training_config"]["parent"]["version"] == 1


def test_warm_start_refuses_data_of_other_fields(
    days: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    models, parent_path, today = days
    with pytest.raises(SystemExit, match="--warm-start: that bundle's fields"):
        train_tiny(models, "--data", str(today), "--fields", "user,item",
                   "--warm-start", str(parent_path))  # fmt: skip


@pytest.mark.slow
def test_a_warm_start_on_a_later_slice_beats_that_slice_from_scratch_in_fewer_epochs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The generated click log's first two thirds make yesterday's model; its last third, with
    users and items the first never saw, is trained from scratch (up to 6 epochs, early
    stopping) and warm-started from yesterday's (2 epochs). Both test on the same rows of the
    slice (the same file, split by the same seed)."""
    log = click_log(12_000, seed=2)
    earlier = log.take(slice(0, 8_000)).write_csv(tmp_path / "earlier.csv")
    later = log.take(slice(8_000, None)).write_csv(tmp_path / "later.csv")
    new_users = set(log.columns["user"][8_000:]) - set(log.columns["user"][:8_000])
    assert len(new_users) > 50
    models = tmp_path / "models"
    options = ("--fields", CLICK_FIELDS, "--label", "clicked", "--max-rows", "12000",
               "--lr", "0.01", "--batch-size", "128")  # fmt: skip

    def trained(data: Path, name: str, epochs: int, *extra: str) -> tuple[float, int]:
        """The published model's test AUC and the epochs it ran."""
        capsys.readouterr()
        path = train_tiny(models, "--data", str(data), "--name", name, "--epochs", str(epochs),
                          *options, *extra)  # fmt: skip
        ran = re.search(r"summary: best epoch \d+ of (\d+)", capsys.readouterr().out)
        metrics = bundles.read(path).manifest.metrics
        assert ran is not None and metrics is not None
        return metrics.test["auc"], int(ran.group(1))

    trained(earlier, "clicks", 3)
    scratch, scratch_epochs = trained(later, "scratch", 6)
    warm, warm_epochs = trained(later, "clicks", 2, "--warm-start", str(models / "clicks" / "1"))
    print(f"later slice: from scratch AUC {scratch:.4f} in {scratch_epochs} epochs,"
          f" warm-started {warm:.4f} in {warm_epochs}")  # fmt: skip
    assert warm_epochs < scratch_epochs
    assert warm >= scratch - 0.01  # the tolerance: at least as good, to 0.01 AUC
