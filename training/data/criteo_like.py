"""`make-data criteo-like`: Criteo-shaped click logs of any size, with a known true click probability.

The columns are named as the Criteo display-ads logs: `label`, 13 numeric fields `I1`–`I13`
(non-negative counts, log-normal so heavy-tailed, each missing in its own share of rows) and 26
categorical fields `C1`–`C26` (8 hex digit ids, some fields missing in part of the rows). Each
categorical field draws ranks from a bounded Zipf law over its cardinality (Criteo's own distinct
counts, the largest capped at a few million), and a rank is shown as an id by a bijection of 32-bit
integers, so distinct ranks are distinct ids.

The label is drawn from a known logistic model (the "world", fixed by `world_seed`):

    logit = base + sum_f effect_f(C_f) + sum_j w_j z_j + sum over PLANTED pairs

with z_j the standardised log1p of I_j (0 when missing) and effect_f a value's own effect. Every
per-value parameter is a hash of (world seed, field, rank), so the world needs no tables and rows
can be generated one block at a time. The planted pairs are low-rank, as a factorization machine
models them: C1×C2 is <u(C1), v(C2)> over latent vectors of PLANTED_RANK dimensions, C6×C14 the
same, I1×C3 is z(I1) g(C3). Each row's true probability sigmoid(logit) is the `_oracle` column, so
a model's AUC can be set against the best any model can reach on the same rows.

Rows are written as Parquet shards, one row group at a time: memory depends on `row_group_rows`,
not on the number of rows. A side file `_criteo-like.json` records how the data was made.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

NUMERIC = tuple(f"I{i}" for i in range(1, 14))
CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))
LABEL = "label"
ORACLE = "_oracle"  # the true click probability of the row
SIDE_FILE = "_criteo-like.json"  # "_": pyarrow datasets and --data skip it
ROW_GROUP_ROWS = 100_000
# Criteo's Kaggle set's distinct values per field, the largest capped so a table of each fits
CARDINALITY = dict(zip(CATEGORICAL, (
    1_460, 583, 4_000_000, 2_000_000, 305, 24, 12_517, 633, 3, 93_145, 5_683, 3_000_000, 3_194,
    27, 14_992, 2_500_000, 10, 5_652, 2_173, 4, 3_500_000, 18, 15, 286_181, 105, 142_572,
), strict=True))  # fmt: skip
# share of rows where the field is missing (near Criteo's own; C fields not named are always set)
NUMERIC_MISSING = dict(zip(NUMERIC, (
    0.45, 0.0, 0.21, 0.22, 0.03, 0.22, 0.04, 0.0005, 0.04, 0.45, 0.04, 0.77, 0.22,
), strict=True))  # fmt: skip
CATEGORICAL_MISSING = {"C19": 0.44, "C20": 0.44, "C22": 0.76, "C25": 0.44, "C26": 0.44}
# the log-normal behind each count: log1p(I_j) ~ N(mean, sd), floored to an integer
NUMERIC_LOG_MEAN = np.linspace(0.5, 5.0, len(NUMERIC))
NUMERIC_LOG_SD = np.linspace(2.0, 1.0, len(NUMERIC))
ZIPF_EXPONENT = 1.1  # rank r drawn with probability ~ r^-1.1: a few ids take most rows
MAIN_EFFECT_SD = 0.25  # the spread of each categorical value's own effect, in logit units
NUMERIC_WEIGHT = 0.15  # |w_j| of a count's standardised log
PLANTED_RANK = 4  # dimensions of the latent vectors of the planted categorical pairs
# (field, field): the standard deviation of the pair's term in logit units
PLANTED = {("C1", "C2"): 1.2, ("C6", "C14"): 1.0, ("I1", "C3"): 0.8}
TARGET_RATE = 0.25  # base is set so that about this share of rows are clicks, as in Criteo

HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)


@dataclass(frozen=True)
class Generated:
    """What `write` made: the shard files and the side file's summary."""

    files: list[Path]
    rows: int
    clicks: int
    mean_oracle: float
    seconds: float


@dataclass(frozen=True)
class World:
    """The model the labels come from, fixed by its seed."""

    seed: int
    base: float

    def salt(self, field: str, part: int) -> np.uint64:
        """A 64-bit key per (world, field, part) that per-value hashes start from."""
        key = np.array([self.seed * 1_000_003 + _field_number(field) * 131 + part], np.uint64)
        return np.uint64(_mix(key)[0])

    def uniform(self, field: str, part: int, ranks: np.ndarray) -> np.ndarray:
        """A value in [0, 1) per rank, the same for a rank wherever and whenever it is drawn."""
        return _unit(_mix(ranks.astype(np.uint64) ^ self.salt(field, part)))

    def centred(self, field: str, part: int, ranks: np.ndarray) -> np.ndarray:
        """A value of mean 0 and variance 1 per rank (uniform on ±sqrt(3))."""
        return (2.0 * self.uniform(field, part, ranks) - 1.0) * math.sqrt(3.0)

    def logit(self, ranks: dict[str, np.ndarray], z: dict[str, np.ndarray]) -> np.ndarray:
        """The true logit of rows given their categorical ranks (-1: missing) and standardised
        counts (0: missing)."""
        n = len(next(iter(ranks.values())))
        logit = np.full(n, self.base)
        for field, rank in ranks.items():
            logit += np.where(rank >= 0, MAIN_EFFECT_SD * self.centred(field, 0, rank), 0.0)
        signs = np.where(self.uniform("I", 0, np.arange(len(NUMERIC))) < 0.5, -1.0, 1.0)
        for sign, field in zip(signs, NUMERIC, strict=True):
            logit += sign * NUMERIC_WEIGHT * z[field]
        for (left, right), strength in PLANTED.items():
            logit += strength * self.pair(left, right, ranks, z)
        return logit

    def pair(
        self, left: str, right: str, ranks: dict[str, np.ndarray], z: dict[str, np.ndarray]
    ) -> np.ndarray:
        """A planted pair's term, of variance about 1 where both fields are present."""
        right_factor = [self.centred(right, 1 + d, ranks[right]) for d in range(PLANTED_RANK)]
        present = ranks[right] >= 0
        if left in z:  # a count times a value's factor
            return np.where(present, z[left] * right_factor[0], 0.0)
        left_factor = [self.centred(left, 1 + d, ranks[left]) for d in range(PLANTED_RANK)]
        dot = sum(a * b for a, b in zip(left_factor, right_factor, strict=True))
        both = present & (ranks[left] >= 0)
        return np.where(both, dot / math.sqrt(PLANTED_RANK), 0.0)


def write(
    out: Path,
    rows: int,
    shards: int = 1,
    seed: int = 0,
    world_seed: int = 0,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> Generated:
    """Write `rows` rows as `shards` Parquet files `part-00000.parquet`, ... in `out` (near equal
    shares, the first shards one row longer where it does not divide), and the side file.

    The rows depend on `seed` (and the sizes); the model behind the labels on `world_seed` only,
    so a held-out set of the same world is the same command with another `seed`.
    """
    if rows < 1 or shards < 1 or row_group_rows < 1:
        raise ValueError("rows, shards and row_group_rows must be at least 1")
    if shards > rows:
        raise ValueError(f"{shards} shards need at least as many rows, not {rows}")
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = World(world_seed, base_logit(world_seed))
    files, clicks, oracle_sum = [], 0, 0.0
    for shard, shard_rows in enumerate(_shares(rows, shards)):
        path = out / f"part-{shard:05d}.parquet"
        with pq.ParquetWriter(path, SCHEMA) as writer:
            for group, group_rows in enumerate(_shares_of_size(shard_rows, row_group_rows)):
                rng = np.random.default_rng([seed, shard, group])
                batch = _row_group(world, rng, group_rows)
                writer.write_batch(batch, row_group_size=group_rows)
                clicks += int(np.count_nonzero(batch.column(LABEL).to_numpy()))
                oracle_sum += float(np.sum(batch.column(ORACLE).to_numpy(), dtype=np.float64))
        files.append(path)
    seconds = time.perf_counter() - started
    generated = Generated(files, rows, clicks, oracle_sum / rows, seconds)
    side = {
        "generator": "criteo-like",
        "rows": rows,
        "shards": shards,
        "seed": seed,
        "world_seed": world_seed,
        "row_group_rows": row_group_rows,
        "files": [p.name for p in files],
        "label": LABEL,
        "oracle": ORACLE,
        "clicks": clicks,
        "mean_oracle": generated.mean_oracle,
        "base_logit": world.base,
        "cardinality": CARDINALITY,
        "zipf_exponent": ZIPF_EXPONENT,
        "missing": {**NUMERIC_MISSING, **CATEGORICAL_MISSING},
        "planted": [{"fields": list(pair), "sd": sd} for pair, sd in PLANTED.items()],
        "main_effect_sd": MAIN_EFFECT_SD,
        "numeric_weight": NUMERIC_WEIGHT,
        "suggested_fields": suggested_fields(),
    }
    (out / SIDE_FILE).write_text(json.dumps(side, indent=2) + "\n")
    return generated


def suggested_fields(hash_above: int = 100_000, buckets: int = 1_000_000) -> str:
    """A `--fields` for these columns: counts as log fields, categorical fields with more than
    `hash_above` values hashed into `buckets` slots, the others with vocabularies."""
    numeric = [f"{name}:log" for name in NUMERIC]
    categorical = [
        f"{name}:hash:{buckets}" if CARDINALITY[name] > hash_above else name for name in CATEGORICAL
    ]
    return ",".join(numeric + categorical)


SCHEMA = pa.schema(
    [
        (LABEL, pa.int8()),
        *((name, pa.int64()) for name in NUMERIC),
        *((name, pa.string()) for name in CATEGORICAL),
        (ORACLE, pa.float32()),
    ]
)


def base_logit(world_seed: int, sample: int = 50_000) -> float:
    """The bias that puts the mean true probability near TARGET_RATE, found on a sample of rows
    of the world (seeded apart from any data seed)."""
    world = World(world_seed, 0.0)
    rng = np.random.default_rng([world_seed, 2**31])
    ranks, z, _ = _draw(rng, sample)
    logit = world.logit(ranks, z)
    low, high = -10.0, 10.0
    for _ in range(50):  # bisection: the mean of sigmoid(logit + b) grows with b
        middle = (low + high) / 2
        if np.mean(_sigmoid(logit + middle)) < TARGET_RATE:
            low = middle
        else:
            high = middle
    return round((low + high) / 2, 6)


def _row_group(world: World, rng: np.random.Generator, n: int) -> pa.RecordBatch:
    ranks, z, counts = _draw(rng, n, with_counts=True)
    probability = _sigmoid(world.logit(ranks, z))
    label = (rng.random(n) < probability).astype(np.int8)
    columns: list[pa.Array] = [pa.array(label)]
    for name in NUMERIC:
        value, missing = counts[name]
        columns.append(pa.array(value, mask=missing))
    for name in CATEGORICAL:
        columns.append(_hex_ids(_id_of(name, ranks[name]), ranks[name] < 0))
    columns.append(pa.array(probability.astype(np.float32)))
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def _draw(
    rng: np.random.Generator, n: int, with_counts: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Ranks per categorical field (-1: missing), standardised log counts per numeric field
    (0: missing) and, when asked, the counts with their missing masks."""
    ranks: dict[str, np.ndarray] = {}
    z: dict[str, np.ndarray] = {}
    counts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for j, name in enumerate(NUMERIC):
        mean, sd = NUMERIC_LOG_MEAN[j], NUMERIC_LOG_SD[j]
        value = np.maximum(np.floor(np.expm1(rng.normal(mean, sd, n))), 0.0)
        missing = rng.random(n) < NUMERIC_MISSING[name]
        z[name] = np.where(missing, 0.0, (np.log1p(value) - mean) / sd)
        if with_counts:
            counts[name] = (value.astype(np.int64), missing)
    for name in CATEGORICAL:
        rank = _zipf_ranks(rng, n, CARDINALITY[name])
        missing = rng.random(n) < CATEGORICAL_MISSING.get(name, 0.0)
        ranks[name] = np.where(missing, -1, rank)
    return ranks, z, counts


def _zipf_ranks(rng: np.random.Generator, n: int, cardinality: int) -> np.ndarray:
    """Ranks 0..cardinality-1 from a bounded power law of exponent ZIPF_EXPONENT, by inverting
    its continuous CDF on [1, cardinality + 1): no table of the cardinality's size."""
    s = 1.0 - ZIPF_EXPONENT
    top = (cardinality + 1.0) ** s
    x = (1.0 + rng.random(n) * (top - 1.0)) ** (1.0 / s)
    ranks: np.ndarray = np.minimum(np.floor(x).astype(np.int64) - 1, cardinality - 1)
    return ranks


def _id_of(field: str, ranks: np.ndarray) -> np.ndarray:
    """A 32-bit id per rank: add, multiply by an odd constant and xor-shift, each a bijection of
    32-bit integers, so distinct ranks give distinct ids."""
    mask = np.uint64(0xFFFFFFFF)
    x = (ranks.astype(np.uint64) + np.uint64(_field_number(field) * 0x3C6EF372)) & mask
    x = (x * np.uint64(0x9E3779B1)) & mask
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & mask
    x ^= x >> np.uint64(13)
    return x.astype(np.uint32)


def _hex_ids(ids: np.ndarray, missing: np.ndarray) -> pa.Array:
    """8 lower-case hex digits per id as an arrow string array, built from its buffers."""
    n = len(ids)
    digits = HEX[(ids[:, None] >> SHIFTS) & np.uint32(0xF)]  # (n, 8) ASCII bytes
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    validity = pa.py_buffer(np.packbits(~missing, bitorder="little")) if missing.any() else None
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(digits)), validity
    )


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-mixed 64-bit hash of each 64-bit integer."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (x >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return unit


def _sigmoid(x: np.ndarray) -> np.ndarray:
    probability: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return probability


def _field_number(field: str) -> int:
    """I1..I13 -> 1..13, C1..C26 -> 101..126, any other name (a shared key) -> 0."""
    if field[1:].isdigit():
        return int(field[1:]) + (100 if field[0] == "C" else 0)
    return 0


def _shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near equal shares, the first ones larger by one."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _shares_of_size(total: int, size: int) -> Iterator[int]:
    for start in range(0, total, size):
        yield min(size, total - start)
