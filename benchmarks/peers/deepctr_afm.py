"""Peer of the training benchmark: DeepCTR-Torch's AFM, run in its own environment.

DeepCTR-Torch (https://github.com/shenweichen/DeepCTR-Torch) is the AFM most users find on PyPI. It
runs in a virtual environment of its own (`benchmarks/.envs/deepctr`, benchmarks/peers/envs.py),
because it must not bring its dependencies into the project's, and it imports `requests` without
declaring it.

The training benchmark starts this module in that environment as a child and takes turns with it:
the child builds DeepCTR's AFM on frappe-shaped batches (10 sparse fields, 5,382 features split
evenly over them), prints `ready`, then for each line `step I` on stdin runs one Adam step on the
I-th batch and prints the step's seconds. Its L2 terms are off, as in the other contenders' steps;
the dropout on the attention output is the benchmark's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from benchmarks.peers import envs

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["torch==2.13.0", "deepctr-torch==0.3.0", "requests==2.34.2"]


def ensure_env() -> Path:
    """The peer's interpreter, installing its environment on first use."""
    return envs.ensure_env("deepctr", PACKAGES)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--features", type=int, required=True)
    parser.add_argument("--fields", type=int, required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--t", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, default=8)
    args = parser.parse_args(argv)
    # The protocol owns stdout; whatever the library prints goes to stderr.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr

    import torch
    import torch.nn.functional as F
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import AFM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vocabulary = args.features // args.fields
    columns = [SparseFeat(f"f{i}", vocabulary, embedding_dim=args.k) for i in range(args.fields)]
    model = AFM(
        columns, columns, attention_factor=args.t, l2_reg_linear=0.0, l2_reg_embedding=0.0,
        l2_reg_att=0.0, afm_dropout=args.dropout, init_std=0.01, seed=0, task="binary",
    )  # fmt: skip
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(
        0, vocabulary, (args.batches, args.batch, args.fields), generator=generator
    ).float()  # DeepCTR takes one float matrix of feature ids, one column per field
    labels = torch.randint(0, 2, (args.batches, args.batch, 1), generator=generator).float()

    def step(i: int) -> float:
        started = time.perf_counter()
        prediction = model(inputs[i % args.batches])  # (B, 1), after the sigmoid
        loss = F.binary_cross_entropy(prediction, labels[i % args.batches])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return time.perf_counter() - started

    step(0)  # warm-up
    print("ready", file=protocol)
    for line in sys.stdin:
        command, _, i = line.partition(" ")
        if command != "step":
            break
        print(f"{step(int(i)):.9f}", file=protocol)


if __name__ == "__main__":
    main()
