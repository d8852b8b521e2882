"""Training throughput on CPU: rows/s of a full optimiser step, against a plain PyTorch AFM and the
machine's own fp32 matmul rate.

On frappe-shaped batches (F = 10 fields, 5,382 features), for each k, t and batch size: the
project's AFM and FM as the trainer builds them (`make_optimizer`'s Adam), the AFM as one writes
it from the paper (`benchmarks.peers.plain_afm`) with a plain Adam, and DeepCTR-Torch's AFM
(`benchmarks.peers.deepctr_afm`, a child process in an environment of its own). The limit is a
large fp32 matmul on the same threads; an AFM step costs about P k (t + 2) multiply-adds a row forward and
twice that backward, so the fraction of the limit is rows/s * 6 P k (t + 2) / (matmul FLOP/s).
The models take turns, a few steps each, and each one's fastest step counts: on a shared machine
the ratios within one run mean something, the absolute rows/s little.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from benchmarks.peers import deepctr_afm
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


# One optimiser step on the i-th batch; a contender in another process returns its own timing.
Step = Callable[[int], float | None]


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


@contextlib.contextmanager
def deepctr_step(python: str, k: int, t: int, batch_size: int, threads: int) -> Iterator[Step]:
    """DeepCTR-Torch's AFM as a child process that runs one step per request and reports its time."""
    command = [python, "-m", "benchmarks.peers.deepctr_afm", "--features", str(FRAPPE_FEATURES)]
    command += ["--fields", str(FRAPPE_FIELDS), "--k", str(k), "--t", str(t)]
    command += ["--batch", str(batch_size), "--dropout", str(DROPOUT), "--threads", str(threads)]
    with subprocess.Popen(
        command, cwd=deepctr_afm.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        bufsize=1,
    ) as child:  # fmt: skip
        assert child.stdin is not None and child.stdout is not None
        stdin, stdout = child.stdin, child.stdout
        if stdout.readline().strip() != "ready":
            raise RuntimeError(f"the DeepCTR-Torch peer did not start: {' '.join(command)}")

        def step(i: int) -> float:
            stdin.write(f"step {i}\n")
            return float(stdout.readline())

        try:
            yield step
        finally:
            stdin.write("stop\n")
            stdin.close()


def steps_for(k: int, t: int, batch_size: int) -> dict[str, Step]:
    """The in-process contenders of one setting, freshly initialised at the same seed."""
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
                reported = step(i)
                elapsed = time.perf_counter() - started if reported is None else reported
                best[name] = max(best[name], batch_size / elapsed)
    return best


def run(
    threads: int,
    dims: list[int],
    attention_dims: list[int],
    batch_sizes: list[int],
    steps: int,
    rounds: int,
    deepctr_python: str | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    torch.set_num_threads(threads)
    limit = matmul_gflops()
    results: list[dict[str, Any]] = []
    for k, t, batch_size in itertools.product(dims, attention_dims, batch_sizes):
        with contextlib.ExitStack() as stack:
            contenders = steps_for(k, t, batch_size)
            if deepctr_python is not None:
                contenders["deepctr"] = stack.enter_context(
                    deepctr_step(deepctr_python, k, t, batch_size, threads)
                )
            speeds = rows_per_second(contenders, batch_size, steps, rounds)
        flops = afm_flops_per_row(k, t)
        result = (
            {"threads": threads, "k": k, "t": t, "batch": batch_size, "matmul_gflops": limit}
            | {f"{name}_rows_s": speed for name, speed in speeds.items()}
            | {
                "afm_over_plain": speeds["afm"] / speeds["plain"],
                "afm_fraction_of_limit": speeds["afm"] * flops / (limit * 1e9),
                "plain_fraction_of_limit": speeds["plain"] * flops / (limit * 1e9),
            }
        )
        if "deepctr" in speeds:
            result["afm_over_deepctr"] = speeds["afm"] / speeds["deepctr"]
        results.append(result)
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
    parser.add_argument(
        "--no-deepctr", action="store_true",
        help="leave out DeepCTR-Torch's AFM (its environment is installed on first use)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.attention_dims, args.batch_sizes = [8], [256]
    deepctr_python = None if args.no_deepctr else str(deepctr_afm.ensure_env())
    limit, results = run(
        args.threads, args.dims, args.attention_dims, args.batch_sizes, args.steps, args.rounds,
        deepctr_python,
    )  # fmt: skip
    print(
        f"training throughput, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"fp32 matmul {limit:.0f} GFLOP/s"
    )
    print(
        "| k | t | batch | AFM rows/s | plain AFM rows/s | AFM / plain | DeepCTR AFM rows/s "
        "| AFM / DeepCTR | FM rows/s | AFM / fp32 limit | plain / fp32 limit |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        deepctr = (
            f"{r['deepctr_rows_s']:,.0f} | {r['afm_over_deepctr']:.2f}"
            if "deepctr_rows_s" in r
            else "– | –"
        )
        print(
            f"| {r['k']} | {r['t']} | {r['batch']} | {r['afm_rows_s']:,.0f} "
            f"| {r['plain_rows_s']:,.0f} | {r['afm_over_plain']:.2f} | {deepctr} "
            f"| {r['fm_rows_s']:,.0f} "
            f"| {r['afm_fraction_of_limit']:.3f} | {r['plain_fraction_of_limit']:.3f} |"
        )
    return results


if __name__ == "__main__":
    main()
