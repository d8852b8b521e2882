"""`synthetic`: frappe-shaped logs generated in the repository, with planted pair interactions."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

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


# A team's click log (`click_log`): the shape of a user's own file. The fields as they are
# declared to `train --fields`, and the pairs whose interaction decides the click (logit units per
# ±1 cell): time of day by device, and the item's category by the region a request came from.
CLICK_FIELDS = "user,item,category,region,hour,device,price:numeric"
CLICK_PLANTED = {("hour", "device"): 1.2, ("category", "region"): 1.2}
DEVICES = ("ios", "android", "web")


@dataclass(frozen=True)
class ClickLog:
    """A generated click log: its columns as a file holds them (ts, user, item, category, region,
    hour, device, price, clicked), in time order, and each row's true click probability."""

    columns: dict[str, np.ndarray]
    probability: np.ndarray

    def __len__(self) -> int:
        return len(self.probability)

    def take(self, rows: slice | np.ndarray) -> ClickLog:
        return ClickLog({k: v[rows] for k, v in self.columns.items()}, self.probability[rows])

    def write_csv(self, path: Path) -> Path:
        """The columns (not the probability) as a CSV file, the way a team would export them."""
        pacsv.write_csv(pa.table(self.columns), path)
        return path


def ranks(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rank from 0 to pool - 1 per row, falling off as rank^-0.8 (the inverse of the
    continuous power law's CDF), for a pool size that may differ from row to row."""
    top = pool.astype(np.float64) ** 0.2
    drawn = (1.0 + rng.random(len(pool)) * (top - 1.0)) ** 5.0
    return np.asarray(np.minimum(drawn.astype(np.int64) - 1, pool - 1).clip(0))


def click_log(
    rows: int, seed: int = 0, users: int = 2000, items: int = 1000, days: int = 28
) -> ClickLog:
    """A click log over `days` days whose click probability is known: user and item biases, a
    price effect and, for each pair of CLICK_PLANTED, strength * T[a, b] with T a random ±1 table.

    The world (biases, attributes, tables) depends on `seed` alone, not on `rows`, so logs of
    any size, and any time slice of one, come from the same world. Users and items join over time:
    at time fraction f the first 60% + 40% f of each are active, a few of them (by a power law)
    logging most rows, so a later slice holds users and items an earlier one never saw.
    Each item has a category and a price; the region is where a request came from, row by row.
    """
    world = np.random.default_rng([seed, 0])
    sizes = {"hour": 24, "device": len(DEVICES), "category": 12, "region": 8}
    category = world.integers(0, sizes["category"], items)
    price = np.round(world.lognormal(2.3, 0.6, items), 2)
    user_bias, item_bias = world.normal(0, 0.4, users), world.normal(0, 0.4, items)
    tables = {
        (a, b): world.choice([-1.0, 1.0], size=(sizes[a], sizes[b])) for a, b in CLICK_PLANTED
    }

    rng = np.random.default_rng([seed, 1])
    start = 1_700_000_000
    ts = np.sort(start + rng.integers(0, days * 86_400, rows))
    joined = 0.6 + 0.4 * (ts - start) / (days * 86_400)
    user = ranks(np.ceil(users * joined).astype(np.int64), rng)
    item = ranks(np.ceil(items * joined).astype(np.int64), rng)
    hour = (ts // 3600) % 24
    device = rng.choice(len(DEVICES), rows, p=[0.45, 0.4, 0.15])
    region = rng.integers(0, sizes["region"], rows)

    logit = -1.2 + user_bias[user] + item_bias[item] - 0.03 * (price[item] - 10.0)
    codes = {"hour": hour, "device": device, "category": category[item], "region": region}
    for (a, b), strength in CLICK_PLANTED.items():
        logit += strength * tables[a, b][codes[a], codes[b]]
    probability = 1.0 / (1.0 + np.exp(-logit))
    clicked = (rng.random(rows) < probability).astype(np.int64)
    columns = {
        "ts": ts,
        "user": np.char.add("u", user.astype(str)),
        "item": np.char.add("i", item.astype(str)),
        "category": np.char.add("c", category[item].astype(str)),
        "region": np.char.add("r", region.astype(str)),
        "hour": hour,
        "device": np.asarray(DEVICES)[device],
        "price": price[item],
        "clicked": clicked,
    }
    return ClickLog(columns, probability)
