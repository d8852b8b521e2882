"""The process group of a torchrun launch: which rank this is, a barrier, metrics summed across
ranks, values broadcast from rank 0, and each rank's share of the training rows.

`torchrun --nproc-per-node N -m training train ...` sets RANK, WORLD_SIZE and LOCAL_RANK in each
process's environment; `start` joins the group once (gloo on CPU, NCCL on CUDA). Without those
variables, or with a world of one, there is no group and every helper is the one-process case:
the rank is 0, a barrier returns at once and a broadcast value is the value given.

Rank 0 evaluates, checkpoints and publishes; the others wait for it at a barrier or a broadcast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from training.trainer import BatchSource, Tensors

T = TypeVar("T")
# A collective waits this long for the slowest rank: rank 0's vocabulary pass, evaluation and
# export keep the others waiting at a broadcast or a barrier, minutes on large data.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place in the launch: rank `rank` of `size`, device index `local_rank`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


ONE_PROCESS = World()


def from_environment(environ: dict[str, str] | None = None) -> World:
    """The world torchrun describes in the environment; one process when it describes none."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return ONE_PROCESS
    return World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))


def backend_for(device: str) -> str:
    """gloo for CPU tensors, NCCL for CUDA ones."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def start(device: str) -> tuple[World, str]:
    """Join torchrun's process group (once) and return this rank's world and the device it trains
    on: `cuda` becomes `cuda:LOCAL_RANK`, each process on its own GPU."""
    world = from_environment()
    if not world.distributed:
        return world, device
    if torch.device(device).type == "cuda" and torch.device(device).index is None:
        device = f"cuda:{world.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # the rendezvous address and this rank come from torchrun's environment (env://)
        dist.init_process_group(backend_for(device), timeout=TIMEOUT)
    return world, device


def describe(world: World, device: str) -> str:
    """A line for the log: which rank of how many, on which host and device, over what backend."""
    import socket

    return (
        f"rank {world.rank} of {world.size} (local rank {world.local_rank}) on"
        f" {socket.gethostname()}, {device}, {backend_for(device)}"
    )


def stop() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def broadcast(world: World, value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object; the others' `value` is ignored)."""
    if not world.distributed:
        return value
    box: list[Any] = [value if world.is_zero else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def gather(world: World, value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if not world.distributed:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def all_sum(world: World, values: list[float], device: str = "cpu") -> list[float]:
    """Each value summed over the ranks (float64)."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(v) for v in tensor.cpu()]


@contextmanager
def rank_zero_first(world: World) -> Iterator[bool]:
    """Rank 0 runs the block (True) while the others skip it (False) and wait at the barrier
    after it, so nothing on any rank goes on before rank 0's work is done."""
    try:
        yield world.is_zero
    finally:
        barrier(world)


class RankShare:
    """This rank's part of each global batch of rows held in memory.

    Every rank draws the same permutation (the same seeded generator) and cuts the same global
    batches of `batch_size` rows; rank r trains on rows r, r + size, ... of each. Together the
    ranks' rows of a step are exactly the one-process run's batch, so the gradient DDP averages is
    that batch's (the loss is scaled by the step's global rows, `trainer.train_one_epoch`).
    """

    def __init__(self, data: Tensors, world: World) -> None:
        self.data, self.world = data, world

    def __len__(self) -> int:
        return len(range(self.world.rank, len(self.data), self.world.size))

    def batches(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[Tensors]:
        from training.trainer import Tensors

        for batch in self.data.batches(batch_size, shuffle, generator):
            mine = slice(self.world.rank, None, self.world.size)
            yield Tensors(batch.index[mine], batch.value[mine], batch.label[mine])


class ShardBatches:
    """A rank's own shard of a stream (`StreamSource.shard`), batched at `batch_size / size`
    rows, so a step over all ranks takes the global batch."""

    def __init__(self, shard: BatchSource, world: World) -> None:
        self.shard, self.world = shard, world

    def __len__(self) -> int:
        return len(self.shard)

    def batches(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[Tensors]:
        return self.shard.batches(batch_size // self.world.size, shuffle, generator)
