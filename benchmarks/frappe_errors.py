"""Where a frappe rating bundle's squared error lies: by label, and by what the training file says
of each row's (user, app) pair.

    python -m benchmarks.frappe_errors models/frappe-afm/1 [more bundles] [--split test]

A pair is "used" when the training file logs the user using the app, "negative only" when it
holds the pair only as a sampled negative, and "unseen" otherwise. Scores and attention come from
the bundle's ONNX graph through onnxruntime. `--negatives` names the training rows the bundles
learnt from: `paper` (--paper-negatives, what `make reproduce` trains on) or `file`
(--drop-used-negatives).

It also says how far each row's attention is from uniform (1/P on each of the P pairs): a mean over
the pairs can look flat because rows disagree, or because every row is flat.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import bundle, data, metrics
from training.data import frappe
from training.readers import Table

KINDS = ("used", "negative only", "unseen")


@dataclass
class Group:
    label: float
    kind: str
    rows: int
    mse: float
    share: float  # of the split's total squared error


def pair_kinds(train: Table, table: Table) -> np.ndarray:
    """For each row of table, what the training file says of its (user, app) pair."""
    known, pairs = (
        frappe.pair_keys(train, ("user", "item")),
        frappe.pair_keys(table, ("user", "item")),
    )
    positive = train.label > 0
    used, sampled = np.isin(pairs, known[positive]), np.isin(pairs, known[~positive])
    return np.where(used, KINDS[0], np.where(sampled, KINDS[1], KINDS[2]))


def breakdown(kinds: np.ndarray, label: np.ndarray, score: np.ndarray) -> list[Group]:
    """Squared error of the clipped scores per (label, pair kind), as the paper's RMSE counts it."""
    error = (np.clip(score, -1.0, 1.0) - label) ** 2
    groups = []
    for sign in (1.0, -1.0):
        for kind in KINDS:
            rows = (label == sign) & (kinds == kind)
            if rows.any():
                share = float(error[rows].sum() / error.sum())
                groups.append(Group(sign, kind, int(rows.sum()), float(error[rows].mean()), share))
    return groups


@dataclass
class Spread:
    pairs: int
    row_std: float  # the standard deviation of a row's P weights, averaged over the rows
    row_max: float  # a row's largest weight, averaged over the rows
    rows_over_twice_uniform: float  # the share of rows with some weight above 2 / P


def attention_spread(attention: np.ndarray) -> Spread:
    """How far the rows of an (N, P) attention matrix are from the uniform 1/P."""
    pairs = attention.shape[1]
    largest = attention.max(axis=1)
    return Spread(
        pairs,
        float(attention.std(axis=1).mean()),
        float(largest.mean()),
        float((largest > 2.0 / pairs).mean()),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.frappe_errors", description=__doc__)
    parser.add_argument("bundles", nargs="+", type=Path, help="published frappe rating bundles")
    parser.add_argument("--split", choices=["validation", "test"], default="test")
    parser.add_argument("--data-dir", type=Path, default=data.default_data_dir())
    parser.add_argument("--negatives", choices=["paper", "file"], default="paper")
    args = parser.parse_args(argv)

    paper = args.negatives == "paper"
    splits = frappe.load(
        "rating", args.data_dir / "frappe", drop_used_negatives=not paper, paper_negatives=paper
    )
    table = getattr(splits, args.split)
    kinds = pair_kinds(splits.train, table)
    for path in args.bundles:
        outputs = bundle.read(path).run(table.columns, ["score", "attention"])
        score, spread = outputs["score"], attention_spread(outputs["attention"])
        rmse = metrics.compute("rating", table.label, score, splits.label_range)["rmse"]
        print(f"\n{path}, {args.split} RMSE {rmse:.4f}\n")
        print("| label | (user, app) in training | rows | MSE | share of squared error |")
        print("|---|---|---|---|---|")
        for g in breakdown(kinds, table.label, score):
            print(f"| {g.label:+.0f} | {g.kind} | {g.rows:,} | {g.mse:.4f} | {g.share:.3f} |")
        print(
            f"\nattention per row, against uniform 1/{spread.pairs} = {1 / spread.pairs:.4f}: "
            f"std {spread.row_std:.4f}, largest weight {spread.row_max:.4f}, "
            f"rows with a weight above 2/{spread.pairs}: {spread.rows_over_twice_uniform:.1%}"
        )


if __name__ == "__main__":
    main()
