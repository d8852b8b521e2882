"""A team's own file end to end, against the truth: a generated click log with planted pair
interactions, trained with `train --data FILE --fields ... --label clicked` alone, served.

The log (`training.data.synthetic.click_log`) knows each row's true click probability, so the best
any model can do on the test rows is known: the oracle AUC, the AUC of those probabilities on the
same test rows the trainer holds out (its seeded random split is recomputed here). Steps:

1. write the log as one CSV file under benchmarks/results/own-data/ (ignored by git);
2. `python -m training train --data FILE --fields CLICK_FIELDS --label clicked`, with nothing else
   but where to publish (or the extra options given after `--`), as a child process;
3. the model's test AUC (from bundle.json, and recomputed through onnxruntime on the rows known
   to be the test rows, which checks the split was recomputed right) against the oracle's;
4. `python -m service` on the published bundle, `GET /explain` for test rows: the pairs ranked
   by attention, per row and on average, against the planted pairs (CLICK_PLANTED).

Prints a markdown table for BENCHMARKS.md.

    .venv/bin/python -m benchmarks.own_data [--rows 100000] [--seed 0] [-- --epochs 40 ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from service.client import AFMClient, Row
from service.process import free_port, service_command, start
from training import bundle as bundles
from training.data import files
from training.data.splits import SplitPlan
from training.data.synthetic import CLICK_FIELDS, CLICK_PLANTED, ClickLog, click_log
from training.readers import Table

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "results" / "own-data"
NAME = "own-data-afm"
# The trainer's default --split and its seed: the rows it tests are recomputed from these.
SPLIT = (0.8, 0.1, 0.1)


@dataclass
class Attention:
    """How the served model's attention ranks the pairs over the rows explained."""

    rows: int
    planted_on_top: int  # rows whose top len(planted) pairs by attention are the planted ones
    mean: dict[tuple[str, str], float]  # mean attention per pair over the rows

    def ranked(self) -> list[tuple[str, str]]:
        return sorted(self.mean, key=lambda pair: -self.mean[pair])


def test_rows(log: ClickLog, seed: int) -> np.ndarray:
    """The row numbers `train --data` tests on: its own split of a table of row numbers."""
    table = Table({"row": np.arange(len(log))}, log.columns["clicked"].astype(np.float32))
    plan = SplitPlan("random", SPLIT, seed=seed)
    return np.asarray(files.split_table(table, None, plan)[2].columns["row"])


def train(data: Path, models: Path, seed: int, extra: Sequence[str]) -> tuple[Path, str, float]:
    """Train as a user would, from the command line; the bundle, the run's summary, seconds."""
    command = [
        sys.executable, "-m", "training", "train", "--data", str(data), "--fields", CLICK_FIELDS,
        "--label", "clicked", "--out", str(models), "--name", NAME, *extra,
    ]  # fmt: skip
    if seed:
        command += ["--seed", str(seed)]
    print("$", shlex.join(command[1:]), file=sys.stderr)
    began = time.perf_counter()
    quiet = {**os.environ, "TQDM_DISABLE": "1"}  # the epoch lines, not a progress bar per step
    done = subprocess.run(command, cwd=ROOT, env=quiet, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    print(done.stderr, done.stdout, sep="", file=sys.stderr)
    if done.returncode != 0:
        sys.exit(f"training failed ({done.returncode})")
    return bundles.resolve(models, NAME), done.stdout, seconds


def explain_rows(log: ClickLog, rows: np.ndarray, fields: list[str]) -> list[Row]:
    numeric = {"price"}
    return [
        {f: float(log.columns[f][i]) if f in numeric else str(log.columns[f][i]) for f in fields}
        for i in rows
    ]


def served_attention(models: Path, log: ClickLog, rows: np.ndarray, fields: list[str]) -> Attention:
    """`GET /explain` of each row from the real service on `models`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFM_")}
    server = start(
        service_command(port, "--models-dir", str(models)), port, WORK / "server.log",
        env=env, cwd=ROOT,
    )  # fmt: skip
    planted = {tuple(sorted(p)) for p in CLICK_PLANTED}
    total: dict[tuple[str, str], float] = {}
    on_top = 0
    try:
        with AFMClient(server.url) as afm:
            for row in explain_rows(log, rows, fields):
                pairs = afm.explain(row)["pairs"]
                by_attention = sorted(pairs, key=lambda p: -p["attention"])
                top = {tuple(sorted(p["fields"])) for p in by_attention[: len(planted)]}
                on_top += top == planted
                for p in pairs:
                    key = (p["fields"][0], p["fields"][1])
                    total[key] = total.get(key, 0.0) + p["attention"]
    finally:
        server.stop()
    return Attention(len(rows), on_top, {k: v / len(rows) for k, v in total.items()})


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.own_data", description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the generated log")
    parser.add_argument("--seed", type=int, default=0, help="the log's world and the split seed")
    parser.add_argument("--explain", type=int, default=200, help="test rows to ask /explain")
    parser.add_argument("train_options", nargs="*", help="after --: more `train` options")
    args = parser.parse_args(argv)

    WORK.mkdir(parents=True, exist_ok=True)
    models = WORK / "models"
    shutil.rmtree(models, ignore_errors=True)
    log = click_log(args.rows, args.seed)
    data = log.write_csv(WORK / f"clicks-{args.rows}-{args.seed}.csv")
    started = dt.datetime.now(dt.UTC)
    measured = commit()  # the code measured, before anyone commits again
    path, summary, seconds = train(data, models, args.seed, args.train_options)

    bundle = bundles.read(path)
    tested = test_rows(log, args.seed)
    label = log.columns["clicked"][tested]
    oracle = float(roc_auc_score(label, log.probability[tested]))
    assert bundle.manifest.metrics is not None
    reported = bundle.manifest.metrics.test["auc"]
    fields = bundle.encoder.names
    scored = bundle.score({f: log.columns[f][tested] for f in fields})
    recomputed = float(roc_auc_score(label, scored))
    if abs(recomputed - reported) > 1e-4:
        sys.exit(f"the test rows were not recomputed right: AUC {recomputed} against {reported}")
    stop = re.search(r"summary: (.*)", summary)
    attention = served_attention(models, log, tested[: args.explain], fields)

    planted = sorted("×".join(p) for p in CLICK_PLANTED)
    ranked = ["×".join(p) for p in attention.ranked()]
    options = " ".join(args.train_options) or "none (defaults)"
    table = "\n".join([
        f"Measured {started:%Y-%m-%d %H:%M} UTC at commit `{measured}` on {platform.node()}"
        f" ({os.cpu_count()} CPUs, load average {load_average()} at the end):"
        f" `python -m benchmarks.own_data --rows {args.rows} --seed {args.seed}"
        + (f" -- {' '.join(args.train_options)}`" if args.train_options else "`"),
        "",
        "| rows | train options | epochs run (best) | train time | test AUC | oracle AUC | gap |"
        " planted pairs top by mean attention | rows with both planted pairs on top |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {args.rows:,} | {options} | {epochs_of(stop)} | {seconds:.0f} s | {reported:.4f}"
        f" | {oracle:.4f} | {oracle - reported:.4f} | {set(ranked[: len(planted)]) == set(planted)}"
        f" ({', '.join(ranked[:3])}, ...) | {attention.planted_on_top} of {attention.rows} |",
    ])  # fmt: skip
    print(table)
    print(f"\nplanted: {', '.join(planted)}; {stop.group(1) if stop else summary}", file=sys.stderr)
    for pair in attention.ranked():
        print(f"  {'×'.join(pair):20s} {attention.mean[pair]:.4f}", file=sys.stderr)
    return table


def epochs_of(stop: re.Match[str] | None) -> str:
    found = re.search(r"best epoch (\d+) of (\d+)", stop.group(1)) if stop else None
    return f"{found.group(2)} ({found.group(1)})" if found else "?"


if __name__ == "__main__":
    main()
