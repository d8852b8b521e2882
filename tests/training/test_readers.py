"""CSV, Parquet and libFM readers must hand the model the very same inputs for the same rows."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training import data
from training.bundle.features import FeatureEncoder, FeatureSpec, FieldSpec
from training.data import frappe
from training.readers import read_libfm, read_table

FIELDS = ["user", "item", "weather"]
SPEC = FeatureSpec(tuple(FieldSpec(n) for n in FIELDS))


def write_same_rows(folder: Path, rows: int = 500, seed: int = 0) -> tuple[Path, Path, Path]:
    """The same rows as a named CSV, a Parquet file and a libFM file with global indices."""
    rng = np.random.default_rng(seed)
    raw = {
        "user": rng.integers(0, 40, rows).astype(str),
        "item": np.char.add("app", rng.integers(0, 90, rows).astype(str)),
        "weather": rng.choice(["sunny", "rainy", "Clear sky, warm"], rows),
    }
    label = rng.integers(0, 2, rows)
    csv, parquet, libfm = folder / "rows.csv", folder / "rows.parquet", folder / "rows.libfm"
    table = pa.table({"label": label, **raw})
    pq.write_table(table, parquet)
    with open(csv, "w") as f:
        f.write("label," + ",".join(FIELDS) + "\n")
        for i in range(rows):
            f.write(f"{label[i]}," + ",".join(f'"{raw[n][i]}"' for n in FIELDS) + "\n")
    offsets: dict[str, int] = {}
    index: dict[str, dict[str, int]] = {}
    for n in FIELDS:  # a global libFM numbering unrelated to our vocabulary order
        values = sorted(set(raw[n]), reverse=True)
        index[n] = {v: len(offsets) * 1000 + i for i, v in enumerate(values)}
        offsets[n] = len(offsets)
    with open(libfm, "w") as f:
        for i in range(rows):
            f.write(
                f"{2 * label[i] - 1} " + " ".join(f"{index[n][raw[n][i]]}:1" for n in FIELDS) + "\n"
            )
    return csv, parquet, libfm


def encoded(table):
    encoder = FeatureEncoder.fit(SPEC, table.columns)
    result = encoder.encode(table.columns)
    return result.index, result.value


def test_csv_parquet_and_libfm_give_identical_model_inputs(tmp_path):
    csv, parquet, libfm = write_same_rows(tmp_path)
    from_csv, from_parquet, from_libfm = (
        read_table(csv, SPEC),
        read_table(parquet, SPEC),
        read_libfm(libfm, FIELDS),
    )
    for other in (from_parquet, from_libfm):
        index, value = encoded(other)
        assert np.array_equal(index, encoded(from_csv)[0])
        assert np.array_equal(value, encoded(from_csv)[1])
    assert np.array_equal(from_csv.label, from_parquet.label)
    assert np.array_equal(2 * from_csv.label - 1, from_libfm.label)


def test_reader_names_missing_columns(tmp_path):
    csv, _, _ = write_same_rows(tmp_path, rows=5)
    with pytest.raises(ValueError, match="city"):
        read_table(csv, FeatureSpec((FieldSpec("user"), FieldSpec("city"))))


def test_libfm_reader_refuses_rows_with_the_wrong_number_of_fields(tmp_path):
    path = tmp_path / "bad.libfm"
    path.write_text("1 3:1 7:1 9:1\n-1 2:1 8:1\n")
    with pytest.raises(ValueError, match=r"bad.libfm:2: 2 features"):
        read_libfm(path, FIELDS)


FRAPPE = data.default_data_dir() / "frappe"


@pytest.mark.frappe
@pytest.mark.skipif(not (FRAPPE / "frappe.train.csv").exists(), reason="frappe data not available")
def test_frappe_csv_and_paper_libfm_files_give_identical_model_inputs():
    csv = frappe.load("rating", FRAPPE, "csv")
    libfm = frappe.load("rating", FRAPPE, "libfm")
    csv_encoder = FeatureEncoder.fit(csv.spec, csv.train.columns)
    libfm_encoder = FeatureEncoder.fit(libfm.spec, libfm.train.columns)
    assert csv_encoder.num_features == libfm_encoder.num_features
    for part in ("train", "validation", "test"):
        a = csv_encoder.encode(getattr(csv, part).columns)
        b = libfm_encoder.encode(getattr(libfm, part).columns)
        assert np.array_equal(a.index, b.index), part
        assert np.array_equal(a.value, b.value), part
        assert np.array_equal(getattr(csv, part).label, getattr(libfm, part).label), part
    assert set(np.unique(csv.test.label)) == {-1.0, 1.0}
