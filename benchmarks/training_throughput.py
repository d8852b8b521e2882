"""Training throughput on CPU: rows/s of a full optimiser step, AFM against FM (its peer).

A frappe-shaped batch (F=10 fields, 5,382 features), k=64 and t=64 as in DESIGN.md's budget, and
k=256 as in the paper. Results are ratios within one run; absolute rows/s on shared machines are
noise.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import torch

from training.model import AFM, AFMConfig
from training.trainer import loss_fn

FRAPPE_FEATURES, FRAPPE_FIELDS = 5382, 10  # the shape of a frappe batch


def rows_per_second(model: AFM, batch_size: int, steps: int, seed: int = 0) -> float:
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(
        0,
        model.config.num_features,
        (steps, batch_size, model.config.num_fields),
        generator=generator,
    )
    value = torch.ones(batch_size, model.config.num_fields)
    label = torch.randint(0, 2, (steps, batch_size), generator=generator).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(i: int) -> None:
        loss = loss_fn("ctr", model(index[i], value).raw, label[i])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    step(0)  # warm-up
    started = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch_size / (time.perf_counter() - started)


def run(
    threads: list[int], dims: list[int], batch_size: int, steps: int
) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for n in threads:
        torch.set_num_threads(n)
        for k in dims:
            speeds = {}
            for name, attention in (("fm", False), ("afm", True)):
                torch.manual_seed(0)
                model = AFM(
                    AFMConfig(
                        FRAPPE_FEATURES, FRAPPE_FIELDS, k, k, attention=attention, dropout=0.3
                    )
                )
                speeds[name] = rows_per_second(model, batch_size, steps)
            results.append(
                {
                    "threads": n,
                    "k": k,
                    "fm_rows_s": speeds["fm"],
                    "afm_rows_s": speeds["afm"],
                    "afm_over_fm": speeds["afm"] / speeds["fm"],
                }
            )
    return results


def run_batches(batch_sizes: list[int], steps: int) -> list[dict[str, object]]:
    """The frappe recipe's AFM (k = 256, t = 8) on one thread at several batch sizes: the
    batch sets the (B, P, k) pair tensor's size, and with it how fast a row trains."""
    torch.set_num_threads(1)
    results: list[dict[str, object]] = []
    for batch_size in batch_sizes:
        torch.manual_seed(0)
        config = AFMConfig(FRAPPE_FEATURES, FRAPPE_FIELDS, 256, 8, dropout=0.5)
        model = AFM(config)
        pair_mib = batch_size * len(model.pair_i) * config.embedding_dim * 4 / 2**20  # float32
        speed = rows_per_second(model, batch_size, steps)
        results.append({"batch": batch_size, "pair_tensor_mib": pair_mib, "afm_rows_s": speed})
    return results


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument(
        "--recipe-batches",
        type=int,
        nargs="*",
        default=[512, 1024, 4096],
        help="batch sizes for the frappe recipe's AFM (k=256, t=8, one thread); none to skip",
    )
    args = parser.parse_args(argv)
    print(
        f"training throughput, torch {torch.__version__}, {platform.processor() or platform.machine()}, batch {args.batch_size}"
    )
    print("| threads | k = t | FM rows/s | AFM rows/s | AFM / FM |\n|---|---|---|---|---|")
    results = run(args.threads, args.dims, args.batch_size, args.steps)
    for r in results:
        print(
            f"| {r['threads']} | {r['k']} | {r['fm_rows_s']:,.0f} | {r['afm_rows_s']:,.0f} | {r['afm_over_fm']:.2f} |"
        )
    if args.recipe_batches:
        batches: list[dict[str, Any]] = run_batches(args.recipe_batches, args.steps)
        reference = batches[-1]["afm_rows_s"]
        print("\nfrappe recipe's AFM (k = 256, t = 8), one thread")
        print(
            "| batch | pair tensor MiB | AFM rows/s | against the last batch |\n|---|---|---|---|"
        )
        for b in batches:
            print(
                f"| {b['batch']} | {b['pair_tensor_mib']:.0f} | {b['afm_rows_s']:,.0f} | {b['afm_rows_s'] / reference:.2f} |"
            )
        results += batches
    return results


if __name__ == "__main__":
    main()
