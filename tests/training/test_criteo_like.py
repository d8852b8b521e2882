import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from training.cli import main
from training.data import criteo_like
from training.data.criteo_like import CATEGORICAL, LABEL, NUMERIC, ORACLE, SIDE_FILE, write

ROWS = 20_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("criteo-like")
    write(out, ROWS, shards=3, seed=3, row_group_rows=4_000)
    return out


@pytest.fixture(scope="module")
def table(generated: Path) -> pa.Table:
    return ds.dataset(generated, format="parquet").to_table()


def test_shards_split_the_rows_and_hold_row_groups_of_the_asked_size(generated):
    files = sorted(generated.glob("*.parquet"))
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(3)]
    metadata = [pq.ParquetFile(f).metadata for f in files]
    assert [m.num_rows for m in metadata] == [6_667, 6_667, 6_666]
    for m in metadata:
        sizes = [m.row_group(g).num_rows for g in range(m.num_row_groups)]
        assert max(sizes) == 4_000 and sum(sizes) == m.num_rows


def test_columns_are_criteos_label_counts_and_hex_ids_with_the_oracle(table):
    assert table.column_names == [LABEL, *NUMERIC, *CATEGORICAL, ORACLE]
    assert tuple(f"I{i}" for i in range(1, 14)) == NUMERIC
    assert tuple(f"C{i}" for i in range(1, 27)) == CATEGORICAL
    assert set(np.unique(table[LABEL].to_numpy()).tolist()) == {0, 1}
    for name in NUMERIC:
        counts = table[name].drop_null().to_numpy()
        assert table.schema.field(name).type == pa.int64()
        assert counts.min() >= 0
    for name in CATEGORICAL:
        ids = table[name].drop_null().to_pylist()
        assert all(re.fullmatch("[0-9a-f]{8}", v) for v in ids[:500]), name
    oracle = table[ORACLE].to_numpy()
    assert ((oracle > 0) & (oracle < 1)).all()


def test_counts_are_heavy_tailed_and_some_fields_are_missing_in_part(table):
    counts = table["I5"].drop_null().to_numpy().astype(float)
    assert np.percentile(counts, 99) > 5 * np.median(counts)  # a long right tail
    assert table["I12"].null_count > 0.6 * ROWS  # I12 is missing in most rows, as in Criteo
    assert table["I2"].null_count == 0
    assert table["C22"].null_count > 0.6 * ROWS
    assert table["C1"].null_count == 0


def test_cardinalities_are_zipf_like(table):
    c3 = table["C3"].to_numpy(zero_copy_only=False)
    values, counts = np.unique(c3, return_counts=True)
    assert len(values) > 0.1 * ROWS  # a field of millions shows thousands of ids in 20k rows
    assert np.sort(counts)[::-1][:10].sum() > 0.2 * ROWS  # and a few of them take many rows
    c9 = table["C9"].to_numpy(zero_copy_only=False)
    assert len(np.unique(c9)) == criteo_like.CARDINALITY["C9"]


def test_the_same_seed_writes_the_same_rows_and_another_seed_others(tmp_path, table):
    again = tmp_path / "again"
    write(again, ROWS, shards=3, seed=3, row_group_rows=4_000)
    assert ds.dataset(again, format="parquet").to_table().equals(table)
    other = tmp_path / "other"
    write(other, ROWS, shards=3, seed=4, row_group_rows=4_000)
    different = ds.dataset(other, format="parquet").to_table()
    assert not different["C3"].equals(table["C3"])


def test_planted_signal_is_detectable_through_the_oracle(table):
    label, oracle = table[LABEL].to_numpy(), table[ORACLE].to_numpy()
    assert roc_auc_score(label, oracle) > 0.8
    assert abs(label.mean() - oracle.mean()) < 0.02  # labels are drawn from the oracle
    assert 0.2 < oracle.mean() < 0.3


def interaction(table: pa.Table, left: str, right: str, top: int = 3) -> float:
    """RMS of what an additive fit leaves in the mean true logit over the cells of the `top`
    commonest values of two fields: near 0 unless the pair interacts."""
    logit = np.log(table[ORACLE].to_numpy() / (1 - table[ORACLE].to_numpy()))
    a, b = (table[f].to_numpy(zero_copy_only=False) for f in (left, right))
    counts_a = dict(zip(*np.unique(a, return_counts=True), strict=True))
    counts_b = dict(zip(*np.unique(b, return_counts=True), strict=True))
    rows_a = sorted(counts_a, key=lambda v: -counts_a[v])[:top]
    rows_b = sorted(counts_b, key=lambda v: -counts_b[v])[:top]
    cells = np.array([[logit[(a == x) & (b == y)].mean() for y in rows_b] for x in rows_a])
    residual = cells - cells.mean(1, keepdims=True) - cells.mean(0, keepdims=True) + cells.mean()
    return float(np.sqrt((residual**2).mean()))


def test_planted_pairs_interact_and_their_fields_with_other_partners_do_not(table):
    c1_c2, c6_c14 = interaction(table, "C1", "C2"), interaction(table, "C6", "C14")
    assert c1_c2 > 0.4 and c6_c14 > 0.3
    assert c1_c2 > 2 * max(interaction(table, "C1", "C8"), interaction(table, "C5", "C2"))
    assert c6_c14 > 5 * max(interaction(table, "C6", "C23"), interaction(table, "C17", "C14"))


def test_side_file_records_how_the_data_was_made(generated):
    side = json.loads((generated / SIDE_FILE).read_text())
    assert (side["rows"], side["shards"], side["seed"], side["world_seed"]) == (ROWS, 3, 3, 0)
    assert side["oracle"] == ORACLE
    assert {tuple(p["fields"]) for p in side["planted"]} == {
        ("C1", "C2"),
        ("C6", "C14"),
        ("I1", "C3"),
    }
    assert "C3:hash:" in side["suggested_fields"]


def test_make_data_command_writes_the_shards(tmp_path, capsys):
    out = tmp_path / "made"
    main(["make-data", "criteo-like", "--rows", "2000", "--shards", "2", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == [
        SIDE_FILE,
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert "wrote 2,000 rows in 2 shards" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["make-data", "criteo-like", "--rows", "0", "--out", str(out)])
