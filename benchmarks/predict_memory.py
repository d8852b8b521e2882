"""Peak memory of `python -m training predict` on 100k and on 1M rows: streaming keeps it flat.

`predict` reads a record batch at a time, scores it and writes it as one row group, so its memory
should not grow with the file. Each run here is a child process, and its peak resident set size is
that child's own (`os.wait4`'s ru_maxrss, taken by a small launcher process: see benchmarks/peak_memory.py). For
scale, two more children: one that imports `training.predict` and reads the bundle and stops (the
floor every run pays), and one that reads the whole 1M-row file into an Arrow table (what a run
that did not stream would hold at least, before encoding or scoring any of it). The batch sets the
peak (onnxruntime's buffers for a batch of B rows hold several (B, pairs, k) tensors), so one more
run at the largest size takes a batch an eighth of `--batch-size`.

The bundle: an AFM of the default shape (k = 64, t = 64) trained briefly (`--quick`) on the
generated click log (`training.data.synthetic.click_log`); the rows scored are more of that log,
as CSV and as Parquet, in benchmarks/results/predict-memory/ (ignored by git).

    .venv/bin/python -m benchmarks.predict_memory [--rows 100000 1000000] [--batch-size 8192]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.peak_memory import run_measured
from training.data.synthetic import CLICK_FIELDS, click_log

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "results" / "predict-memory"
NAME = "predict-memory-afm"


@dataclass
class Run:
    """One child process: what it did, its peak RSS and its wall time."""

    what: str
    rows: int | None
    size: int | None  # input bytes
    peak_rss: int  # bytes
    seconds: float


def train_bundle(models: Path) -> Path:
    data = click_log(20_000, seed=0).write_csv(WORK / "train.csv")
    command = [
        sys.executable, "-m", "training", "train", "--quick", "--data", str(data),
        "--fields", CLICK_FIELDS, "--label", "clicked", "--embedding-dim", "64",
        "--attention-dim", "64", "--out", str(models), "--name", NAME,
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr[-3000:]}")
    return models / NAME / "1"


def inputs(rows: int) -> dict[str, Path]:
    """The log's rows (seed 1: not the training rows) as CSV and Parquet, written once."""
    csv, parquet = WORK / f"rows-{rows}.csv", WORK / f"rows-{rows}.parquet"
    if not (csv.exists() and parquet.exists()):
        log = click_log(rows, seed=1)
        log.write_csv(csv)
        pq.write_table(pa.table(log.columns), parquet, row_group_size=65_536)
    return {"csv": csv, "parquet": parquet}


def predict(bundle: Path, data: Path, rows: int, batch_size: int, explain: bool) -> Run:
    out = WORK / "scores.parquet"
    command = [
        sys.executable, "-m", "training", "predict", "--bundle", str(bundle), "--data", str(data),
        "--out", str(out), "--batch-size", str(batch_size), *(["--explain"] if explain else []),
    ]  # fmt: skip
    peak, seconds = run_measured(command, WORK / "predict.log")
    printed = json.loads((WORK / "predict.log").read_text().strip().splitlines()[-1])
    if printed["rows"] != rows or pq.ParquetFile(out).metadata.num_rows != rows:
        sys.exit(f"predict scored {printed['rows']} rows of {rows}")
    kind = data.suffix.lstrip(".") + (" --explain" if explain else "")
    return Run(f"predict, {kind}", rows, data.stat().st_size, peak, seconds)


def floor(bundle: Path) -> Run:
    code = "from training import bundle, predict; import sys; bundle.read(sys.argv[1]).session()"
    peak, seconds = run_measured([sys.executable, "-c", code, str(bundle)], WORK / "floor.log")
    return Run("imports and the bundle's session, nothing read", None, None, peak, seconds)


def whole_table(data: Path, rows: int) -> Run:
    code = "import sys, pyarrow.parquet as pq; pq.read_table(sys.argv[1])"
    peak, seconds = run_measured([sys.executable, "-c", code, str(data)], WORK / "whole.log")
    return Run("the whole Parquet file read as one table", rows, data.stat().st_size, peak, seconds)


def mib(n: int | None) -> str:
    return "" if n is None else f"{n / 2**20:,.0f} MiB"


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.predict_memory", description=__doc__
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch-size", type=int, default=8192, help="predict's --batch-size")
    args = parser.parse_args(argv)

    WORK.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK / "models", ignore_errors=True)
    started = dt.datetime.now(dt.UTC)
    measured = commit()  # the code measured, before anyone commits again
    bundle = train_bundle(WORK / "models")
    runs = [floor(bundle)]
    for rows in args.rows:
        files = inputs(rows)
        for kind in ("csv", "parquet"):
            runs.append(predict(bundle, files[kind], rows, args.batch_size, explain=False))
            print(runs[-1], file=sys.stderr)
        runs.append(predict(bundle, files["parquet"], rows, args.batch_size, explain=True))
        print(runs[-1], file=sys.stderr)
    largest = max(args.rows)
    small = args.batch_size // 8  # the batch, not the file, sets the peak: a smaller one
    runs.append(predict(bundle, inputs(largest)["parquet"], largest, small, explain=False))
    runs[-1].what += f" --batch-size {small}"
    runs.append(whole_table(inputs(largest)["parquet"], largest))

    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC at commit `{measured}` on {platform.node()}"
        f" ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end):"
        f" `python -m benchmarks.predict_memory` (--batch-size {args.batch_size}).",
        "",
        "| child process | rows | input file | peak RSS | wall | rows/s |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        rate = f"{run.rows / run.seconds:,.0f}" if run.rows and run.what.startswith("p") else ""
        rows = f"{run.rows:,}" if run.rows else ""
        lines.append(
            f"| {run.what} | {rows} | {mib(run.size)} | {mib(run.peak_rss)} | {run.seconds:.1f} s"
            f" | {rate} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
