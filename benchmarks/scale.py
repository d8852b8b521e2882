"""Training at scale on one machine, and large tables served.

Three measurements, each chosen by its flag:

`--rows N` (the default part): N criteo-like rows are generated (`make-data criteo-like`, 39
fields, planted pairs, each row's true probability) and one epoch of `train --stream
--sparse-embeddings` runs in a child process. Reported: the vocabulary pass's seconds, training
rows/s (the trainer's own figure, and all rows over the child's wall time), the child's peak RSS
(`os.wait4`'s ru_maxrss, taken by a small launcher so the benchmark's own memory is not in it) and
the test AUC beside the AUC of the planted probability (`_oracle`) on the same test rows: the best
any model can reach there.

`--steps`: one training step's time (median of a few, after warm-up) of a criteo-shaped model (39
fields, k = 16, batch 2048) at embedding tables of 10k and 5M rows, with dense gradients and Adam,
and with sparse gradients and SparseAdam: the dense step updates every row of the table, the
sparse one the rows used. FM by default (`--model afm` for AFM): the table's share of the step is
the same for both, and AFM's attention only adds a cost that does not depend on the table.

`--large-table`: a bundle with a 5M-row hashed field (k = 16) beside the same model with 1,000
buckets: ONNX export time, bundle size, the service's load time (start to ready) and RSS, and
/predict latency of 100-row requests.

    .venv/bin/python -m benchmarks.scale --rows 1000000 [--buckets 500000] [--model afm]
    .venv/bin/python -m benchmarks.scale --steps
    .venv/bin/python -m benchmarks.scale --large-table

Generated data and results go to benchmarks/results/scale/ (ignored by git); each run prints a
JSON line and writes it there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peak_memory import run_measured

ROOT = Path(__file__).resolve().parents[1]
TIMED_STEPS = 3  # --steps: steps timed after two of warm-up
WORK = ROOT / "benchmarks" / "results" / "scale"


def generated(rows: int, shards: int, seed: int = 0) -> Path:
    """criteo-like rows in WORK, made once per (rows, shards, seed)."""
    from training.data import criteo_like

    folder = WORK / f"criteo-like-{rows}-{shards}-{seed}"
    side = folder / criteo_like.SIDE_FILE
    if not side.exists():
        criteo_like.write(folder, rows, shards, seed)
    return folder


def oracle_auc(folder: Path, seed: int, fractions: tuple[float, float, float]) -> float:
    """AUC of the planted probability on the test rows of the stream's split."""
    import pyarrow.parquet as pq
    from sklearn.metrics import roc_auc_score

    from training.data import criteo_like
    from training.data.stream import row_splits, stream_files

    labels, oracle = [], []
    for path in stream_files(folder):
        table = pq.read_table(path, columns=[criteo_like.LABEL, criteo_like.ORACLE])
        test = row_splits(path, 0, table.num_rows, seed, fractions) == 2
        labels.append(table[criteo_like.LABEL].to_numpy()[test])
        oracle.append(table[criteo_like.ORACLE].to_numpy()[test])
    return float(roc_auc_score(np.concatenate(labels), np.concatenate(oracle)))


def train_at_scale(args: argparse.Namespace) -> dict[str, Any]:
    from training.data.criteo_like import suggested_fields

    made = time.perf_counter()
    folder = generated(args.rows, args.shards)
    made_seconds = time.perf_counter() - made
    models = WORK / "models"
    name = f"scale-{args.rows}-{args.model}-b{args.buckets}"
    fields = suggested_fields(buckets=args.buckets)
    command = [
        sys.executable, "-m", "training", "train", "--stream", "--data", str(folder),
        "--fields", fields, "--model", args.model, "--epochs", "1",
        "--embedding-dim", str(args.embedding_dim), "--attention-dim", str(args.embedding_dim),
        "--batch-size", str(args.batch_size), "--sparse-embeddings", "--threads", str(args.threads),
        "--shuffle-rows", str(args.shuffle_rows), "--out", str(models), "--name", name,
    ]  # fmt: skip
    log = WORK / f"{name}.log"
    peak, seconds = run_measured(command, log)
    text = log.read_text(errors="replace").replace("\r", "\n")
    vocabulary = re.search(r"vocabulary pass: .*? in ([\d.]+)s; ([\d,]+) embedding rows", text)
    epoch = re.search(r"epoch 1: .*?\(([\d,]+) rows/s", text)
    published = re.search(r"published (\S+)", text)
    assert vocabulary and epoch and published, f"unexpected output in {log}"
    manifest = json.loads((Path(published.group(1)) / "bundle.json").read_text())
    rows = manifest["data"]["rows"]
    return {
        "part": "train",
        "rows": args.rows,
        "shards": args.shards,
        "model": args.model,
        "embedding_dim": args.embedding_dim,
        "batch_size": args.batch_size,
        "fields": fields,
        "embedding_rows": int(vocabulary.group(2).replace(",", "")),
        "generate_seconds": round(made_seconds, 1),
        "vocabulary_seconds": float(vocabulary.group(1)),
        "train_rows": rows["train"],
        "train_rows_per_second": int(epoch.group(1).replace(",", "")),
        "child_seconds": round(seconds, 1),
        "rows_per_child_second": round(args.rows / seconds),
        "peak_rss_mib": round(peak / 2**20),
        "test_auc": manifest["metrics"]["test"]["auc"],
        "test_logloss": manifest["metrics"]["test"]["logloss"],
        "oracle_auc": oracle_auc(folder, 0, (0.8, 0.1, 0.1)),
        "bundle": published.group(1),
    }


def step_times(table_rows: int, sparse: bool, steps: int, threads: int, attention: bool) -> float:
    """Median seconds of a training step of a criteo-shaped model (39 fields, k = t = 16)."""
    import torch

    from training.model import AFM, AFMConfig
    from training.trainer import TrainConfig, loss_fn, make_optimizer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AFM(AFMConfig(table_rows, 39, 16, 16, attention))
    optimizer = make_optimizer(model, TrainConfig(sparse_embeddings=sparse))
    generator = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps + 2):
        index = torch.randint(0, table_rows, (2048, 39), generator=generator)
        label = (torch.rand(2048, generator=generator) < 0.25).float()
        began = time.perf_counter()
        loss = loss_fn("ctr", model(index, torch.ones(2048, 39)).raw, label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step >= 2:  # the first steps allocate the optimizer's state
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def steps(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, float] = {}
    for table_rows in (10_000, 5_000_000):
        for sparse in (False, True):
            key = f"{table_rows}-{'sparse' if sparse else 'dense'}"
            seconds = step_times(table_rows, sparse, TIMED_STEPS, args.threads, args.model == "afm")
            found[key] = round(seconds, 4)
            print(f"{key}: {found[key]:.3f} s per step", file=sys.stderr, flush=True)
    return {"part": "steps", "model": args.model, "batch_size": 2048, "fields": 39, "k": 16,
            "seconds": found}  # fmt: skip


def rss_of(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) // 1024  # type: ignore[union-attr]
        for key in ("VmRSS", "VmHWM")
    }


def large_table(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    import pyarrow.parquet as pq

    from service.process import free_port, service_command, start
    from training import export

    folder = generated(20_000, 2)
    names = ["I1", "I2", "C1", "C2", "C3", "C6", "C14"]
    rows = pq.read_table(sorted(folder.glob("*.parquet"))[0], columns=names).to_pylist()
    complete = [r for r in rows if None not in r.values()][:100]  # a request names every field
    instances = [{n: float(v) if n.startswith("I") else v for n, v in r.items()} for r in complete]
    found: dict[str, Any] = {"part": "large-table", "requests": args.requests, "rows_each": 100}
    for label, buckets in (("small", 1_000), ("large", 5_000_000)):
        models = WORK / f"serve-{label}"
        command = [
            sys.executable, "-m", "training", "train", "--data", str(folder), "--fields",
            f"I1:log,I2:log,C1,C2,C3:hash:{buckets},C6,C14", "--epochs", "1",
            "--embedding-dim", "16", "--attention-dim", "16", "--batch-size", "1024",
            "--sparse-embeddings", "--threads", str(args.threads), "--out", str(models),
            "--name", label,
        ]  # fmt: skip
        peak, train_seconds = run_measured(command, WORK / f"serve-{label}-train.log")
        bundle = max((models / label).glob("[0-9]*"), key=lambda p: int(p.name))
        model = export.load_checkpoint(bundle)
        began = time.perf_counter()
        export.export_onnx(model, "ctr", (0.0, 1.0), WORK / f"serve-{label}.onnx")
        export_seconds = time.perf_counter() - began
        served = {p.name: p.stat().st_size for p in bundle.iterdir() if p.name != "checkpoint.pt"}
        port = free_port()
        began = time.perf_counter()
        server = start(
            service_command(port, "--models-dir", str(models), "--workers", "1", "--threads", "1"),
            port, WORK / f"serve-{label}.log", cwd=ROOT, timeout=300,
        )  # fmt: skip
        load_seconds = time.perf_counter() - began
        try:
            latencies = []
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for _ in range(10):  # warm-up
                    client.post("/predict", json={"instances": instances}).raise_for_status()
                for _ in range(args.requests):
                    began = time.perf_counter()
                    client.post("/predict", json={"instances": instances}).raise_for_status()
                    latencies.append(time.perf_counter() - began)
            memory = rss_of(server.process.pid)
        finally:
            server.stop()
        found[label] = {
            "buckets": buckets,
            "num_features": model.config.num_features,
            "train_seconds": round(train_seconds, 1),
            "train_peak_rss_mib": round(peak / 2**20),
            "export_seconds": round(export_seconds, 2),
            "onnx_mib": round(served.get("model.onnx", 0) / 2**20, 1),
            "bundle_mib": round(sum(served.values()) / 2**20, 1),
            "load_seconds": round(load_seconds, 2),
            "service_rss_mib": memory["VmRSS"],
            "service_peak_rss_mib": memory["VmHWM"],
            "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 2),
        }
        print(json.dumps({label: found[label]}), file=sys.stderr, flush=True)
    return found


def commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="generated rows to train on")
    parser.add_argument("--shards", type=int, default=8, help="Parquet files they are written as")
    parser.add_argument("--buckets", type=int, default=500_000, help="slots of each hashed field")
    parser.add_argument("--model", choices=["afm", "fm"], default=None, help="afm (--steps: fm)")
    parser.add_argument("--embedding-dim", type=int, default=16, help="k, and t for AFM")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--shuffle-rows", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer")
    parser.add_argument("--steps", action="store_true", help="time training steps instead")
    parser.add_argument("--large-table", action="store_true", help="serve a 5M-row table instead")
    parser.add_argument("--requests", type=int, default=300, help="--large-table: timed requests")
    args = parser.parse_args(argv)
    args.model = args.model or ("fm" if args.steps else "afm")
    WORK.mkdir(parents=True, exist_ok=True)
    if args.steps:
        result = steps(args)
    elif args.large_table:
        result = large_table(args)
    else:
        result = train_at_scale(args)
    result |= {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), load"
        f" {os.getloadavg()[0]:.1f}",
    }
    tag = f"{args.rows}-{args.model}-b{args.buckets}" if result["part"] == "train" else args.model
    out = WORK / f"{result['part']}-{tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
