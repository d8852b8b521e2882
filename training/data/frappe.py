"""`frappe`: the AFM paper's split of the frappe app-usage log, as named CSV or libFM files."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from training.bundle.features import FeatureSpec, FieldSpec
from training.data.download import Digest, fetch
from training.data.splits import (
    SplitPlan,
    Splits,
    Task,
    derived,
    fingerprint_files,
    task_labels,
)
from training.readers import Table, read_libfm, read_table

FIELDS = [
    "user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country",
    "city",
]  # fmt: skip
SOURCE = "https://raw.githubusercontent.com/hexiangnan/attentional_factorization_machine/master/data/frappe/"
# What this project expects of each file (see ../shared/data/SOURCE.md). The validation and test
# files are the paper's own, checked by the sha256 of their bytes. The training file here was
# rebuilt from the raw log, so the bytes of the authors' copy are unknown: its negatives are other
# random draws. What both must share is every log that is not a held-out positive, so the training
# file is checked by `libfm_positives_digest`: its row counts and its positive rows.
FILES = {
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


DIGESTS: dict[str, Digest] = {"frappe.train.libfm": libfm_positives_digest}


def load(
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
        fetch(SOURCE, FILES, directory, DIGESTS)
    spec = FeatureSpec(tuple(FieldSpec(n) for n in FIELDS))
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
        tables = [read_libfm(p, FIELDS) for p in paths]
    elif data_format == "csv":
        tables = [read_table(p, spec) for p in paths]
    else:
        raise ValueError(f"frappe comes as csv or libfm, not {data_format!r}")
    for t in tables:  # libFM labels are ±1, the CSV's 1/0: bring both to the task's convention
        t.label = task_labels((t.label > 0).astype(np.float32), task, binary=True)
    train, validation, test = tables
    fingerprint = fingerprint_files([*paths, log_path] if paper_negatives else paths)
    if drop_used_negatives:
        train = drop_negatives_of_used_pairs(train, ("user", "item"))
        fingerprint = derived(fingerprint, "drop-used-negatives")
    if paper_negatives:
        train = sample_paper_negatives(train, validation, test, read_log(log_path))
        fingerprint = derived(fingerprint, "paper-negatives")
    plan = SplitPlan("files")
    return Splits("frappe", task, spec, train, validation, test, (-1.0, 1.0), fingerprint, plan)


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


def read_log(path: Path) -> dict[str, np.ndarray]:
    """The raw frappe log (tab-separated, one row per logged use): the frappe fields as text."""
    arrow = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(
            include_columns=FIELDS, column_types={n: pa.string() for n in FIELDS}
        ),
    )
    return {n: np.asarray(arrow.column(n).to_numpy(zero_copy_only=False), dtype=str)
            for n in FIELDS}  # fmt: skip


def sample_paper_negatives(
    train: Table, validation: Table, test: Table, log: dict[str, np.ndarray], seed: int = 0
) -> Table:
    """The training positives, with negatives drawn from the full log as the paper's files were.

    What the paper's validation and test files show of how their negatives were made (checked on
    them, docs/experiments/frappe-negatives.md): each of the 96,203 logs got two negatives with its user and context and
    another app; no negative pairs a user with an app that user used anywhere in the log; no
    negative row repeats; then all rows were split at random. So a context with p logs owns 2p
    negatives, and the training file holds those the held-out files do not: 2p minus the held-out
    negatives with that context (never below zero on the paper's files). This draws them uniformly
    among the apps the user never used, none repeating a negative of the same context. It consults
    the held-out logs, as the authors' own sampling did: this is the paper's training file in all
    but the random draw, not a split a model may be tuned on blind.
    """
    context_fields = [n for n in FIELDS if n != "item"]
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
    columns = {n: np.concatenate([positive.columns[n], negative_columns[n]]) for n in FIELDS}
    order = rng.permutation(len(positive) + len(rows))  # the paper's files are shuffled
    return Table(columns, np.concatenate([positive.label, negative_label])).take(order)
