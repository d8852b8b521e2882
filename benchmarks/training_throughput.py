"""Training throughput on CPU: rows/s of a full optimiser step, against a plain PyTorch AFM and the
machine's own fp32 matmul rate.

On frappe-shaped batches (F = 10 fields, 5,382 features), for each k, t and batch size: the
project's AFM and FM as the trainer builds them (`make_optimizer`'s Adam), and the AFM as one writes
it from the paper (`benchmarks.peers.plain_afm`) with a plain Adam. The limit is a large fp32
matmul on the same threads; an AFM step costs about P k (t + 2) multiply-adds a row forward and
twice that backward, so the fraction of the limit is rows/s * 6 P k (t + 2) / (matmul FLOP/s).
The models take turns, a few steps each, and each one's fastest step counts: on a shared machine
the ratios within one run mean something, the absolute rows/s little.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.peers.plain_afm import PlainAFM
from training.model import AFM, AFMConfig
from training.trainer import TrainConfig, loss_fn, make_optimizer

FRAPPE_FEATURES, FRAPPE_FIELDS = 5382, 10  # the shape of a frappe batch
PAIRS = FRAPPE_FIELDS * (FRAPPE_FIELDS - 1) // 2
DROPOUT = 0.3


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 limit on the current threads: the best of a few size^3 matmuls."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def afm_flops_per_row(k: int, t: int) -> float:
    """P k (t + 2) multiply-adds forward, twice that backward, two FLOPs each."""
    return 2 * 3 * PAIRS * k * (t + 2)


Step = Callable[[int], None]


def make_step(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    batches: int = 8,
) -> Step:
    """One Adam step on the i-th of a few random batches (ctr labels, all values 1)."""
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(
        0, FRAPPE_FEATURES, (batches, batch_size, FRAPPE_FIELDS), generator=generator
    )
    value = torch.ones(batch_size, FRAPPE_FIELDS)
    label = torch.randint(0, 2, (batches, batch_size), generator=generator).float()

    def step(i: int) -> None:
        loss = loss_fn("ctr", forward(index[i % batches], value), label[i % batches])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    return step


def raw_of(model: AFM) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return lambda index, value: model(index, value).raw


def steps_for(k: int, t: int, batch_size: int) -> dict[str, Step]:
    """The three contenders of one setting, freshly initialised at the same seed."""
    steps: dict[str, Step] = {}
    for name, attention in (("afm", True), ("fm", False)):
        torch.manual_seed(0)
        model = AFM(AFMConfig(FRAPPE_FEATURES, FRAPPE_FIELDS, k, t, attention, DROPOUT)).train()
        optimizer = make_optimizer(model, TrainConfig(optimizer="adam", lr=1e-3))
        steps[name] = make_step(raw_of(model), optimizer, batch_size)
    torch.manual_seed(0)
    plain: nn.Module = PlainAFM(FRAPPE_FEATURES, FRAPPE_FIELDS, k, t, DROPOUT).train()
    steps["plain"] = make_step(plain, torch.optim.Adam(plain.parameters(), lr=1e-3), batch_size)
    return steps


def rows_per_second(
    steps: dict[str, Step], batch_size: int, n: int, rounds: int
) -> dict[str, float]:
    """Each contender runs n steps per round, in turn; its fastest step counts (other jobs only
    ever add time, and taking turns exposes every contender to them alike)."""
    best = dict.fromkeys(steps, 0.0)
    for step in steps.values():
        step(0)  # warm-up
    for _ in range(rounds):
        for name, step in steps.items():
            for i in range(n):
                started = time.perf_counter()
                step(i)
                best[name] = max(best[name], batch_size / (time.perf_counter() - started))
    return best


def run(
    threads: int,
    dims: list[int],
    attention_dims: list[int],
    batch_sizes: list[int],
    steps: int,
    rounds: int,
) -> tuple[float, list[dict[str, Any]]]:
    torch.set_num_threads(threads)
    limit = matmul_gflops()
    results: list[dict[str, Any]] = []
    for k, t, batch_size in itertools.product(dims, attention_dims, batch_sizes):
        speeds = rows_per_second(steps_for(k, t, batch_size), batch_size, steps, rounds)
        flops = afm_flops_per_row(k, t)
        results.append(
            {"threads": threads, "k": k, "t": t, "batch": batch_size, "matmul_gflops": limit}
            | {f"{name}_rows_s": speed for name, speed in speeds.items()}
            | {
                "afm_over_plain": speeds["afm"] / speeds["plain"],
                "afm_fraction_of_limit": speeds["afm"] * flops / (limit * 1e9),
                "plain_fraction_of_limit": speeds["plain"] * flops / (limit * 1e9),
            }
        )
        limit = max(limit, matmul_gflops())  # the best the machine showed during the run
    for r in results:
        scale = r["matmul_gflops"] / limit
        r["matmul_gflops"] = limit
        r["afm_fraction_of_limit"] *= scale
        r["plain_fraction_of_limit"] *= scale
    return limit, results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256], help="k")
    parser.add_argument("--attention-dims", type=int, nargs="+", default=[8, 64], help="t")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, default=2, help="steps per contender and round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="t = 8 and batch 256 only")
    args = parser.parse_args(argv)
    if args.quick:
        args.attention_dims, args.batch_sizes = [8], [256]
    limit, results = run(
        args.threads, args.dims, args.attention_dims, args.batch_sizes, args.steps, args.rounds
    )
    print(
        f"training throughput, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"fp32 matmul {limit:.0f} GFLOP/s"
    )
    print(
        "| k | t | batch | AFM rows/s | plain AFM rows/s | AFM / plain | FM rows/s "
        "| AFM / fp32 limit | plain / fp32 limit |\n|---|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['k']} | {r['t']} | {r['batch']} | {r['afm_rows_s']:,.0f} "
            f"| {r['plain_rows_s']:,.0f} | {r['afm_over_plain']:.2f} | {r['fm_rows_s']:,.0f} "
            f"| {r['afm_fraction_of_limit']:.3f} | {r['plain_fraction_of_limit']:.3f} |"
        )
    return results


if __name__ == "__main__":
    main()
