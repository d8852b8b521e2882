"""The data sets the project knows: `synthetic` (embedded), `frappe` and `ml-100k` (read from a path).

Each loader returns `Splits`: the feature spec, train/validation/test tables with labels already in
the task's convention (ctr: 0/1; rating: the rating scale, frappe's ±1 as in the paper), the label
range used to clip ratings, and a fingerprint of the data that trained the model.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from training.bundle import sha256_file
from training.bundle.features import FeatureSpec, FieldSpec
from training.readers import Table, from_arrow, read_libfm, read_table

Task = Literal["ctr", "rating"]
DATASETS = ("synthetic", "frappe", "ml-100k", "files")


@dataclass
class Splits:
    name: str
    task: Task
    spec: FeatureSpec
    train: Table
    validation: Table
    test: Table
    label_range: tuple[float, float]
    fingerprint: str


def default_data_dir() -> Path:
    """AFM_DATA_DIR, else ../shared/data where it exists, else ./data (ignored by git)."""
    if env := os.environ.get("AFM_DATA_DIR"):
        return Path(env)
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return shared if shared.is_dir() else Path("data")


def load(
    name: str,
    task: Task,
    data_dir: Path | None = None,
    data_format: str = "csv",
    max_rows: int | None = None,
    seed: int = 0,
    download: bool = False,
    drop_used_negatives: bool = False,
    paper_negatives: bool = False,
) -> Splits:
    """Load a named data set; `max_rows` caps every split (quick runs)."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if name == "synthetic":
        splits = synthetic(task, rows=max_rows or 60_000, seed=seed)
    elif name == "frappe":
        splits = frappe(
            task, data_dir / "frappe", data_format, download, drop_used_negatives, paper_negatives
        )
    elif name == "ml-100k":
        splits = movielens_100k(task, data_dir / "ml-100k", seed, download)
    else:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if max_rows:
        for part in ("train", "validation", "test"):
            setattr(splits, part, getattr(splits, part).take(slice(0, max_rows)))
        splits.fingerprint = _derived(splits.fingerprint, f"max-rows={max_rows}")
    return splits


def load_files(
    task: Task, spec: FeatureSpec, train: Path, validation: Path, test: Path, delimiter: str = ","
) -> Splits:
    """A user's own CSV or Parquet splits, read with a declared feature spec."""
    paths = [Path(train), Path(validation), Path(test)]
    train_table, validation_table, test_table = (read_table(p, spec, delimiter) for p in paths)
    label_range = _label_range(train_table.label)
    fingerprint = fingerprint_files(paths)
    return Splits(
        "files", task, spec, train_table, validation_table, test_table, label_range, fingerprint
    )


# ---------------------------------------------------------------- synthetic (the embedded default)

SYNTHETIC_CARDINALITY = {
    "user": 600, "item": 1200, "daytime": 7, "weekday": 7, "isweekend": 2, "homework": 3,
    "cost": 2, "weather": 9, "country": 25, "city": 60,
}  # fmt: skip
# The pairs whose interaction decides the label, and how strongly (logit units per ±1 cell).
SYNTHETIC_PLANTED = {("daytime", "weather"): 2.0, ("homework", "cost"): 1.5}


def synthetic(task: Task = "ctr", rows: int = 60_000, seed: int = 0) -> Splits:
    """Frappe-shaped logs whose labels come from known main effects and planted pair interactions.

    Fields: the frappe fields plus a numeric `price` (an item attribute). The label's logit is
    user and item biases, a price effect and, for each planted pair (a, b), strength * T_ab[a, b]
    with T_ab a random ±1 table, so only those pairs interact; the rest of the pairs are noise
    an attention network should learn to ignore.
    """
    rng = np.random.default_rng(seed)
    card = SYNTHETIC_CARDINALITY
    zipf = lambda n: (w := 1.0 / np.arange(1, n + 1) ** 0.8) / w.sum()  # noqa: E731
    codes = {name: rng.integers(0, n, rows) for name, n in card.items()}
    codes["user"] = rng.choice(card["user"], rows, p=zipf(card["user"]))
    codes["item"] = rng.choice(card["item"], rows, p=zipf(card["item"]))
    codes["isweekend"] = (codes["weekday"] >= 5).astype(np.int64)
    codes["city"] = codes["country"] * (card["city"] // card["country"]) + codes["city"] % (
        card["city"] // card["country"]
    )
    item_price = np.round(rng.lognormal(0.5, 1.0, card["item"]), 2) * (
        rng.random(card["item"]) < 0.4
    )
    price = item_price[codes["item"]]

    logit = -0.3 + rng.normal(0, 0.3, card["user"])[codes["user"]]
    logit += rng.normal(0, 0.5, card["item"])[codes["item"]] - 0.3 * np.log1p(price)
    for (a, b), strength in SYNTHETIC_PLANTED.items():
        cells = rng.choice([-1.0, 1.0], size=(card[a], card[b]))
        logit += strength * cells[codes[a], codes[b]]
    clicked = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)

    names = {
        "daytime": ["morning", "noon", "afternoon", "evening", "sunset", "night", "unknown"],
        "weekday": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"],
        "isweekend": ["workday", "weekend"],
        "homework": ["home", "work", "unknown"],
        "cost": ["free", "paid"],
    }
    columns: dict[str, np.ndarray] = {}
    for name, c in codes.items():
        labels = names.get(name) or [f"{name}{i}" if name in ("weather", "country") else str(i)
                                     for i in range(card[name])]  # fmt: skip
        columns[name] = np.asarray(labels)[c]
    columns["price"] = price
    spec = FeatureSpec(
        (*(FieldSpec(n) for n in card), FieldSpec("price", "numeric")), label="label"
    )
    table = Table(columns, _task_labels(clicked, task, binary=True))
    train, validation, test = _split(table, seed, (0.8, 0.1))
    fingerprint = hashlib.sha256(f"synthetic:{rows}:{seed}".encode()).hexdigest()
    return Splits("synthetic", task, spec, train, validation, test, (-1.0, 1.0), fingerprint)


# ------------------------------------------------------------------------------------ frappe

FRAPPE_FIELDS = [
    "user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country",
    "city",
]  # fmt: skip
FRAPPE_SOURCE = "https://raw.githubusercontent.com/hexiangnan/attentional_factorization_machine/master/data/frappe/"
# What this project expects of each file (see ../shared/data/SOURCE.md). The validation and test
# files are the paper's own, checked by the sha256 of their bytes. The training file here was
# rebuilt from the raw log, so the bytes of the authors' copy are unknown: its negatives are other
# random draws. What both must share is every log that is not a held-out positive, so the training
# file is checked by `libfm_positives_digest`: its row counts and its positive rows.
FRAPPE_FILES = {
    "frappe.train.libfm": "f1ecfbe3bebf8088e7253d06efd14c2f3674e4a96153d598f75186c756cced3b",
    "frappe.validation.libfm": "fdf4be563a7dd9b15f7a6e8b32671e90e6e7a2a2bd3af4e10bf13c5ad7e76e9e",
    "frappe.test.libfm": "a2ebaef3a9af8e55f8bb0d08bc4923965e42e43760ebd7635ac2f8c5db99e097",
}


def libfm_positives_digest(content: bytes) -> str:
    """sha256 of a libFM file's positive and negative counts and its sorted positive rows."""
    positives: list[bytes] = []
    negatives = 0
    for line in content.splitlines():
        label, *features = line.split()
        if float(label) > 0:
            features.sort(key=lambda feature: int(feature.partition(b":")[0]))
            positives.append(b" ".join(features))
        else:
            negatives += 1
    positives.sort()
    counts = f"{len(positives)} positives, {negatives} negatives\n".encode()
    return hashlib.sha256(counts + b"\n".join(positives)).hexdigest()


FRAPPE_DIGESTS: dict[str, Callable[[bytes], str]] = {"frappe.train.libfm": libfm_positives_digest}


def frappe(
    task: Task,
    directory: Path,
    data_format: str = "csv",
    download: bool = False,
    drop_used_negatives: bool = False,
    paper_negatives: bool = False,
) -> Splits:
    """The AFM paper's frappe split: named CSV (what a backend sends) or the paper's libFM files.

    `drop_used_negatives` removes the training negatives whose (user, app) pair the training file
    also logs as used (`drop_negatives_of_used_pairs`). `paper_negatives` replaces the training
    file's negatives with ones drawn from the raw log as the paper's files were
    (`sample_paper_negatives`); it needs the named CSV and `raw/frappe.csv`.
    """
    if paper_negatives and drop_used_negatives:
        raise ValueError("paper negatives hold no used pair: drop_used_negatives has nothing to do")
    if paper_negatives and data_format != "csv":
        raise ValueError("paper negatives are drawn from the raw log's named values: use the CSV")
    if data_format == "csv" and not (directory / "frappe.train.csv").exists():
        data_format = "libfm"  # the download gives the paper's libFM files
    if data_format == "libfm" and download:
        fetch(FRAPPE_SOURCE, FRAPPE_FILES, directory, FRAPPE_DIGESTS)
    spec = FeatureSpec(tuple(FieldSpec(n) for n in FRAPPE_FIELDS))
    paths = [directory / f"frappe.{part}.{data_format}" for part in ("train", "validation", "test")]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: pass --data-dir, the folder that holds frappe/, or --download"
            )
    log_path = directory / "raw" / "frappe.csv"
    if paper_negatives and not log_path.exists():
        raise FileNotFoundError(f"{log_path} not found: the paper's negatives are drawn from it")
    if data_format == "libfm":
        tables = [read_libfm(p, FRAPPE_FIELDS) for p in paths]
    elif data_format == "csv":
        tables = [read_table(p, spec) for p in paths]
    else:
        raise ValueError(f"frappe comes as csv or libfm, not {data_format!r}")
    for t in tables:  # libFM labels are ±1, the CSV's 1/0: bring both to the task's convention
        t.label = _task_labels((t.label > 0).astype(np.float32), task, binary=True)
    train, validation, test = tables
    fingerprint = fingerprint_files([*paths, log_path] if paper_negatives else paths)
    if drop_used_negatives:
        train = drop_negatives_of_used_pairs(train, ("user", "item"))
        fingerprint = _derived(fingerprint, "drop-used-negatives")
    if paper_negatives:
        train = sample_paper_negatives(train, validation, test, read_frappe_log(log_path))
        fingerprint = _derived(fingerprint, "paper-negatives")
    return Splits("frappe", task, spec, train, validation, test, (-1.0, 1.0), fingerprint)


def row_keys(columns: dict[str, np.ndarray], names: Iterable[str]) -> np.ndarray:
    """One string per row joining its raw values of the named fields, e.g. (user, app)."""
    first, *rest = names
    keys = columns[first].astype(str, copy=False)  # an empty column may not be text
    for name in rest:
        keys = np.char.add(np.char.add(keys, "\x1f"), columns[name].astype(str, copy=False))
    return keys


def pair_keys(table: Table, key: tuple[str, str]) -> np.ndarray:
    """One string per row for its `key` pair of raw values, e.g. (user, app)."""
    return row_keys(table.columns, key)


def drop_negatives_of_used_pairs(table: Table, key: tuple[str, str]) -> Table:
    """Drop the negative rows whose `key` pair (user, app) the same table also has as a positive.

    The paper sampled frappe's negatives among the apps a user never used: its validation and test
    files hold no negative whose (user, app) is a positive anywhere. The rebuilt training file
    (../shared/data/SOURCE.md) pairs users with apps they used in 1,152 of its 134,423 negatives;
    1,012 of those pairs are positives of the training file itself, which is all this can see
    without looking at the held-out rows.
    """
    pair = pair_keys(table, key)
    positive = table.label > 0  # 1 under ctr, +1 under rating
    used = np.isin(pair, pair[positive])
    return table.take(positive | ~used)


def read_frappe_log(path: Path) -> dict[str, np.ndarray]:
    """The raw frappe log (tab-separated, one row per logged use): the frappe fields as text."""
    arrow = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(
            include_columns=FRAPPE_FIELDS, column_types={n: pa.string() for n in FRAPPE_FIELDS}
        ),
    )
    return {n: np.asarray(arrow.column(n).to_numpy(zero_copy_only=False), dtype=str)
            for n in FRAPPE_FIELDS}  # fmt: skip


def sample_paper_negatives(
    train: Table, validation: Table, test: Table, log: dict[str, np.ndarray], seed: int = 0
) -> Table:
    """The training positives, with negatives drawn from the full log as the paper's files were.

    What the paper's validation and test files show of how their negatives were made (checked on
    them, BENCHMARKS.md): each of the 96,203 logs got two negatives with its user and context and
    another app; no negative pairs a user with an app that user used anywhere in the log; no
    negative row repeats; then all rows were split at random. So a context with p logs owns 2p
    negatives, and the training file holds those the held-out files do not: 2p minus the held-out
    negatives with that context (never below zero on the paper's files). This draws them uniformly
    among the apps the user never used, none repeating a negative of the same context. It consults
    the held-out logs, as the authors' own sampling did: this is the paper's training file in all
    but the random draw, not a split a model may be tuned on blind.
    """
    context_fields = [n for n in FRAPPE_FIELDS if n != "item"]
    contexts, logs_per_context = np.unique(row_keys(log, context_fields), return_counts=True)
    owed = dict(zip(contexts.tolist(), (2 * logs_per_context).tolist(), strict=True))
    taken: dict[str, set[str]] = {}
    for held_out in (validation, test):
        negative = held_out.label <= 0
        keys = row_keys({n: held_out.columns[n][negative] for n in context_fields}, context_fields)
        for key, item in zip(
            keys.tolist(), held_out.columns["item"][negative].tolist(), strict=True
        ):
            if key not in owed:
                raise ValueError(f"a held-out negative's context is not in the log: {key!r}")
            owed[key] -= 1
            taken.setdefault(key, set()).add(item)
    if min(owed.values()) < 0:
        raise ValueError("the held-out files hold more negatives for a context than 2 per log")
    used: dict[str, set[str]] = {}
    for user, item in zip(log["user"].tolist(), log["item"].tolist(), strict=True):
        used.setdefault(user, set()).add(item)
    apps = np.unique(log["item"])
    app_set = set(apps.tolist())
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, str]] = []  # (context key, app)
    for key, count in owed.items():
        user = key.split("\x1f", 1)[0]
        excluded = used[user] | taken.get(key, set())
        count = min(count, len(apps) - len(excluded & app_set))  # a user who used nearly every app
        chosen: set[str] = set()
        while len(chosen) < count:
            for app in rng.choice(apps, count - len(chosen)).tolist():
                if app not in excluded and app not in chosen and len(chosen) < count:
                    chosen.add(app)
        rows += [(key, app) for app in sorted(chosen)]
    positive = train.take(train.label > 0)
    negative_context = np.array([key.split("\x1f") for key, _ in rows], dtype=str)
    negative_columns = {n: negative_context[:, i] for i, n in enumerate(context_fields)}
    negative_columns["item"] = np.array([app for _, app in rows], dtype=str)
    negative_label = np.full(len(rows), train.label.min(), dtype=np.float32)  # 0 (ctr) or -1
    columns = {n: np.concatenate([positive.columns[n], negative_columns[n]]) for n in FRAPPE_FIELDS}
    order = rng.permutation(len(positive) + len(rows))  # the paper's files are shuffled
    return Table(columns, np.concatenate([positive.label, negative_label])).take(order)


# ----------------------------------------------------------------------------------- ml-100k

ML100K_SOURCE = (
    "https://files.pythonhosted.org/packages/py3/r/recbole/recbole-1.2.1-py3-none-any.whl"
)
ML100K_FILES = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
# A film has one to six of these genres. One feature per field (DESIGN.md), so each genre is a
# field of its own holding "1" or "0": all of a film's genres reach the model, not just its first.
ML100K_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western", "unknown",
)  # fmt: skip


def genre_field(genre: str) -> str:
    """`Children's` -> `genre_childrens`, `Sci-Fi` -> `genre_sci_fi`: plain names for requests."""
    return "genre_" + genre.lower().replace("'", "").replace("-", "_")


ML100K_FIELDS = (
    FieldSpec("user_id"), FieldSpec("item_id"), FieldSpec("age", "numeric"), FieldSpec("gender"),
    FieldSpec("occupation"), FieldSpec("zip_prefix"), FieldSpec("release_year"),
    *(FieldSpec(genre_field(g)) for g in ML100K_GENRES),
)  # fmt: skip


def movielens_100k(task: Task, directory: Path, seed: int = 0, download: bool = False) -> Splits:
    """MovieLens 100K ratings joined with user and item side features; seeded 80/10/10 split."""
    if download:
        fetch_from_wheel(ML100K_SOURCE, "recbole/dataset_example/ml-100k/", ML100K_FILES, directory)
    paths = [directory / name for name in ML100K_FILES]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(
                f"{path} not found: pass --data-dir, the folder that holds ml-100k/, or --download"
            )
    read = lambda p: _strip_types(  # noqa: E731
        pacsv.read_csv(
            p,
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=False),
            read_options=pacsv.ReadOptions(use_threads=True),
        )
    )
    inter, users, items = (read(p) for p in paths)
    users = users.append_column(
        "zip_prefix", pc.utf8_slice_codeunits(pc.cast(users["zip_code"], pa.string()), 0, 3)
    )
    genres_of = [set(str(text).split(" ")) for text in items["class"].to_pylist()]
    for genre in ML100K_GENRES:
        flags = pa.array(["1" if genre in genres else "0" for genres in genres_of])
        items = items.append_column(genre_field(genre), flags)
    # Arrow's hash join returns rows in no fixed order: keep the ratings' own order, or the
    # seeded split would differ between runs (and a model started from another's weights would
    # be tested on rows it trained on).
    inter = inter.append_column("row", pa.array(np.arange(inter.num_rows)))
    joined = inter.join(users, "user_id").join(items, "item_id").sort_by("row")
    joined = joined.append_column("label", pc.cast(joined["rating"], pa.float32()))
    spec = FeatureSpec(ML100K_FIELDS, label="label")
    table = from_arrow(joined, spec)
    rating = table.label
    table.label = (rating >= 4).astype(np.float32) if task == "ctr" else rating
    train, validation, test = _split(table, seed, (0.8, 0.1))
    fingerprint = _derived(fingerprint_files(paths), f"split-seed={seed}")  # the rows trained on
    return Splits("ml-100k", task, spec, train, validation, test, (1.0, 5.0), fingerprint)


def _strip_types(table: pa.Table) -> pa.Table:
    """RecBole headers carry types (`user_id:token`): keep the names only."""
    return table.rename_columns([name.split(":")[0] for name in table.column_names])


# ---------------------------------------------------------------------------------- download


def fetch(
    base_url: str,
    files: dict[str, str],
    directory: Path,
    digests: dict[str, Callable[[bytes], str]] | None = None,
) -> None:
    """Download each missing file from base_url into directory, refusing a digest mismatch.

    A file's digest is the sha256 of its bytes unless `digests` names another function for it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for name, expected in files.items():
        digest = (digests or {}).get(name, _sha256)
        target = directory / name
        if target.exists() and digest(target.read_bytes()) == expected:
            continue
        with urllib.request.urlopen(base_url + name, timeout=60) as response:
            _write_checked(response.read(), expected, target, base_url + name, digest)


def fetch_from_wheel(url: str, member_prefix: str, files: dict[str, str], directory: Path) -> None:
    """Download a zip (a wheel) once and extract the named members, each checked by sha256."""
    directory.mkdir(parents=True, exist_ok=True)
    if all((directory / n).exists() and sha256_file(directory / n) == s for n, s in files.items()):
        return
    with urllib.request.urlopen(url, timeout=120) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    for name, sha256 in files.items():
        _write_checked(archive.read(member_prefix + name), sha256, directory / name, url)


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _write_checked(
    content: bytes,
    expected: str,
    target: Path,
    source: str,
    digest: Callable[[bytes], str] = _sha256,
) -> None:
    actual = digest(content)
    if actual != expected:
        what = "sha256" if digest is _sha256 else digest.__name__
        raise ValueError(f"{source}: {what} {actual} does not match the expected {expected}")
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
        tmp.write(content)
    shutil.move(tmp.name, target)


def _derived(fingerprint: str, step: str) -> str:
    """The fingerprint of data made from the fingerprinted data by `step`."""
    return hashlib.sha256(f"{fingerprint}:{step}".encode()).hexdigest()


def fingerprint_files(paths: Iterable[Path]) -> str:
    return hashlib.sha256(
        json.dumps({Path(p).name: sha256_file(Path(p)) for p in paths}, sort_keys=True).encode()
    ).hexdigest()


# ----------------------------------------------------------------------------------- helpers


def _task_labels(label: np.ndarray, task: Task, binary: bool) -> np.ndarray:
    """ctr keeps 0/1; a binary label under the rating task becomes ±1, as the paper scores frappe."""
    if task == "rating" and binary:
        return (2.0 * label - 1.0).astype(np.float32)
    return label.astype(np.float32)


def _label_range(label: np.ndarray) -> tuple[float, float]:
    return float(label.min()), float(label.max())


def _split(table: Table, seed: int, fractions: tuple[float, float]) -> tuple[Table, Table, Table]:
    order = np.random.default_rng(seed).permutation(len(table))
    n_train = int(fractions[0] * len(table))
    n_valid = int(fractions[1] * len(table))
    return (
        table.take(order[:n_train]),
        table.take(order[n_train : n_train + n_valid]),
        table.take(order[n_train + n_valid :]),
    )
