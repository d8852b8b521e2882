"""`synthetic`: frappe-shaped logs generated in the repository, with planted pair interactions."""

from __future__ import annotations

import hashlib

import numpy as np

from training.bundle.features import FeatureSpec, FieldSpec
from training.data.splits import SplitPlan, Splits, Task, split_rows, task_labels
from training.readers import Table

CARDINALITY = {
    "user": 600, "item": 1200, "daytime": 7, "weekday": 7, "isweekend": 2, "homework": 3,
    "cost": 2, "weather": 9, "country": 25, "city": 60,
}  # fmt: skip
# The pairs whose interaction decides the label, and how strongly (logit units per ±1 cell).
PLANTED = {("daytime", "weather"): 2.0, ("homework", "cost"): 1.5}


def zipf(n: int) -> np.ndarray:
    """Probabilities of n ranks falling off as rank^-0.8: a few users and items log the most."""
    weights = 1.0 / np.arange(1, n + 1) ** 0.8
    return np.asarray(weights / weights.sum())


def load(task: Task = "ctr", rows: int = 60_000, seed: int = 0) -> Splits:
    """Frappe-shaped logs whose labels come from known main effects and planted pair interactions.

    Fields: the frappe fields plus a numeric `price` (an item attribute). The label's logit is
    user and item biases, a price effect and, for each planted pair (a, b), strength * T_ab[a, b]
    with T_ab a random ±1 table, so only those pairs interact; the rest of the pairs are noise
    an attention network should learn to ignore.
    """
    rng = np.random.default_rng(seed)
    card = CARDINALITY
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
    for (a, b), strength in PLANTED.items():
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
    table = Table(columns, task_labels(clicked, task, binary=True))
    train, validation, test = split_rows(table, seed, (0.8, 0.1))
    fingerprint = hashlib.sha256(f"synthetic:{rows}:{seed}".encode()).hexdigest()
    plan = SplitPlan("random", (0.8, 0.1, 0.1), seed=seed)
    return Splits("synthetic", task, spec, train, validation, test, (-1.0, 1.0), fingerprint, plan)
