"""Training loop: one function per phase, early stopping on validation with the best weights kept."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training import checkpoint, metrics
from training.distributed import ONE_PROCESS, World, all_sum, broadcast, gather
from training.model import AFM


@dataclass
class TrainConfig:
    task: str = "ctr"  # ctr | rating
    epochs: int = 20
    batch_size: int = 2048
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adagrad
    l2_attention: float = 0.0  # lambda on ||W||^2 (the paper's attention regulariser)
    # The attention network's first layer (W, b) at its own rate (None: lr). Adagrad's first step
    # moves every entry by the full rate: at 0.1, b (about 0.03) jumps by 0.1 and the units it
    # turns negative are off on every pair from then on (docs/experiments/attention-start.md).
    attention_lr: float | None = None
    weight_decay: float = 0.0  # L2 on all parameters through the optimizer
    patience: int = 3  # epochs without validation improvement before stopping
    # On a plateau the learning rate is multiplied by lr_decay (1: constant): at a constant rate
    # frappe's FM stalls well above the RMSE a smaller rate then reaches
    # (docs/experiments/frappe-recipe.md).
    lr_decay: float = 1.0
    lr_decay_patience: int = 2  # epochs without improvement before each decay
    seed: int = 0
    device: str = "cpu"
    label_range: tuple[float, float] = (-1.0, 1.0)  # ratings are clipped to it when evaluated
    # The embedding and linear tables take sparse gradients (the rows a batch uses) and their own
    # optimizer (SparseAdam, or Adagrad's sparse update), so a step's cost does not grow with them
    sparse_embeddings: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Tensors:
    index: torch.Tensor  # (N, F) int64
    value: torch.Tensor  # (N, F) float32
    label: torch.Tensor  # (N,) float32

    def __len__(self) -> int:
        return len(self.label)

    @classmethod
    def from_numpy(cls, index: np.ndarray, value: np.ndarray, label: np.ndarray) -> Tensors:
        return cls(torch.from_numpy(index), torch.from_numpy(value), torch.from_numpy(label))

    def batches(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[Tensors]:
        order = (
            torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            rows = order[start : start + batch_size]
            yield Tensors(self.index[rows], self.value[rows], self.label[rows])


class BatchSource(Protocol):
    """What fit trains and evaluates on: `Tensors` in memory, or a stream of files
    (`training.data.stream.StreamSplit`)."""

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
    ) -> Iterator[Tensors]: ...


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)
    train_rows_per_second: float = 0.0
    stopped_by_hook: bool = False  # on_epoch ended it before patience or the epoch cap
    interrupted: bool = False  # fit's interrupt_after ended it: a checkpoint, no final model


# After each epoch: its number and validation scores; True stops training there (a search's
# pruner ends a poor trial early this way; the best epoch's weights are still restored).
EpochHook = Callable[[int, dict[str, float]], bool]


@dataclass
class EarlyStopping:
    """Which epoch to keep, and when to stop.

    A trained start (an FM's weights, say) is a candidate to keep but not the bar that patience
    runs against: an AFM phase whose first epochs fall below its FM and then climb back keeps
    training while its own epochs improve (docs/experiments/attention-start.md).
    """

    patience: int
    higher_is_better: bool
    best: float | None = None  # the best score so far, a start included: the one fit returns
    best_trained: float | None = None  # the best score of a trained epoch: what patience watches
    stale: int = 0  # epochs since best_trained last improved

    def better(self, score: float, than: float | None) -> bool:
        return than is None or (score > than if self.higher_is_better else score < than)

    def update(self, score: float) -> bool:
        """Record an epoch's score; True when it is the best so far, a start included."""
        if self.better(score, self.best_trained):
            self.best_trained, self.stale = score, 0
        else:
            self.stale += 1
        if self.better(score, self.best):
            self.best = score
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


class SparseAndDense(torch.optim.Optimizer):
    """Two optimizers stepped as one: the tables' (sparse gradients) and the other parameters'.
    Their parameter groups are shared, so a scheduler's rate reaches both."""

    def __init__(self, tables: torch.optim.Optimizer, dense: torch.optim.Optimizer) -> None:
        self.tables, self.dense = tables, dense
        self.defaults = dense.defaults
        self.param_groups = dense.param_groups + tables.param_groups
        self.state = dense.state

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.dense.step()
        self.tables.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none)
        self.tables.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(), "tables": self.tables.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dense.load_state_dict(state_dict["dense"])
        self.tables.load_state_dict(state_dict["tables"])


class RowwiseSparseAdam(torch.optim.SparseAdam):
    """SparseAdam's update, step for step and bit for bit, applied by gathering and scattering the
    rows a batch used. torch's SparseAdam adds sparse tensors into the dense moments and table,
    three such adds a step, each slower than the gather and scatter of the same rows: on a
    3.6M-row table (k = 16) and a batch of 2,048 criteo-like rows, 0.20 s of its step against
    0.09 s here (docs/experiments/streaming.md). Its state is SparseAdam's (`step`, `exp_avg`,
    `exp_avg_sq`), so checkpoints of either load in the other."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise RuntimeError("RowwiseSparseAdam takes sparse gradients only")
                grad = param.grad.coalesce()  # one entry per row: the update is not linear
                rows, values = grad.indices()[0], grad.values()
                if group["maximize"]:
                    values = -values
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                if not values.numel():
                    continue
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                # old + (1 - b) * (new - old), in SparseAdam's order of operations
                old_avg, old_avg_sq = (
                    exp_avg.index_select(0, rows),
                    exp_avg_sq.index_select(0, rows),
                )
                avg = values.sub(old_avg).mul_(1 - beta1).add_(old_avg)
                avg_sq = values.pow(2).sub_(old_avg_sq).mul_(1 - beta2).add_(old_avg_sq)
                exp_avg.index_copy_(0, rows, avg)
                exp_avg_sq.index_copy_(0, rows, avg_sq)
                steps = state["step"]
                size = group["lr"] * math.sqrt(1 - beta2**steps) / (1 - beta1**steps)
                denominator = avg_sq.sqrt_().add_(group["eps"])
                param.index_add_(0, rows, avg.div_(denominator).mul_(-size))


def make_optimizer(model: AFM, config: TrainConfig) -> torch.optim.Optimizer:
    # the tables' gradients are sparse exactly when their optimizer takes sparse gradients
    model.embedding.sparse = model.linear.sparse = config.sparse_embeddings
    tables = [model.embedding.weight, model.linear.weight]
    sparse = config.sparse_embeddings
    params = [p for p in model.parameters() if not (sparse and any(p is t for t in tables))]
    groups: list[dict[str, Any]] = [{"params": params}]
    if config.attention_lr is not None and model.config.attention:
        first_layer = list(model.attention_w.parameters())  # W and b
        rest = [p for p in params if not any(p is q for q in first_layer)]
        groups = [{"params": rest}, {"params": first_layer, "lr": config.attention_lr}]
    if config.sparse_embeddings:
        if config.weight_decay:
            raise ValueError("sparse embeddings take no weight decay (SparseAdam, sparse Adagrad)")
        trained = [p for p in tables if p.requires_grad]
        dense = make_dense_optimizer(groups, config)
        if not trained:
            return dense
        if config.optimizer == "adam":
            return SparseAndDense(RowwiseSparseAdam(trained, lr=config.lr), dense)
        # Adagrad's sparse update: fused and foreach kernels take dense gradients only. It builds
        # its sparse tensors from a coalesced gradient: checking them each step is not needed, and
        # saying so stops torch's warning that the checks are implicitly off.
        torch.sparse.check_sparse_tensor_invariants.disable()  # type: ignore[no-untyped-call]
        return SparseAndDense(torch.optim.Adagrad(trained, lr=config.lr, foreach=False), dense)
    return make_dense_optimizer(groups, config)


def make_dense_optimizer(
    groups: list[dict[str, Any]], config: TrainConfig
) -> torch.optim.Optimizer:
    # fused: one kernel per step over all parameters instead of a pass per operation; the dense
    # embedding table's update is a large share of a small batch's step
    # (docs/experiments/training-throughput.md)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    if config.optimizer == "adagrad":
        return torch.optim.Adagrad(
            groups, lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def loss_fn(
    task: str, raw: torch.Tensor, label: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    if task == "ctr":
        return F.binary_cross_entropy_with_logits(raw, label, reduction=reduction)
    return F.mse_loss(raw, label, reduction=reduction)


def steps(batches: Iterator[Tensors], world: World, device: str) -> Iterator[tuple[Tensors, int]]:
    """Each batch with the rows of its step over all ranks. The steps end for every rank when
    any rank's batches end, so all ranks take the same steps (a stream's shards differ in rows;
    the rows a longer shard has left wait for its next epoch's order)."""
    for batch in batches:
        if world.distributed:
            rows, ended = all_sum(world, [len(batch.label), 0.0], device)
            if ended:
                return
            yield batch, int(rows)
        else:
            yield batch, len(batch.label)
    if world.distributed:
        all_sum(world, [0.0, 1.0], device)  # the other ranks' call of this step: they end too


class EpochStats(NamedTuple):
    loss: float  # mean training loss
    rows_per_second: float
    outside_step: float  # share of the epoch's time spent outside forward, backward and update


def train_one_epoch(
    model: AFM,
    optimizer: torch.optim.Optimizer,
    data: BatchSource,
    config: TrainConfig,
    generator: torch.Generator,
    description: str = "train",
    world: World = ONE_PROCESS,
    net: torch.nn.Module | None = None,
) -> EpochStats:
    """One pass over the shuffled training data.

    Under DDP (`net` wraps `model`, `data` yields this rank's share of each global batch) the loss
    is the rows' sum over the step's rows on all ranks, times the ranks: DDP averages the ranks'
    gradients, so a step's gradient is its global batch's mean, however the rows fell to ranks.
    The loss and rows/s returned are over all ranks."""
    model.train()
    forward = net or model
    total, rows, in_step, started = 0.0, 0, 0.0, time.perf_counter()
    batches = data.batches(config.batch_size, shuffle=True, generator=generator)
    progress = tqdm(
        steps(batches, world, config.device),
        total=math.ceil(len(data) * world.size / config.batch_size),
        desc=description,
        leave=False,
        disable=not world.is_zero,
    )
    for batch, step_rows in progress:
        index, value, label = (t.to(config.device) for t in (batch.index, batch.value, batch.label))
        step_started = time.perf_counter()
        out = forward(index, value)
        if world.distributed:
            summed = loss_fn(config.task, out.raw, label, reduction="sum")
            loss: torch.Tensor = summed * (world.size / step_rows)
            batch_total = summed.item()
        else:
            loss = loss_fn(config.task, out.raw, label)
            batch_total = loss.item() * len(label)
        if config.l2_attention:
            loss = loss + config.l2_attention * model.attention_l2()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += batch_total
        in_step += time.perf_counter() - step_started
        rows += len(label)
        progress.set_postfix(loss=f"{total / max(rows, 1):.4f}")
    elapsed = time.perf_counter() - started
    if world.distributed:
        # the ranks keep step with each other, so one rank's time is the epoch's
        total, all_rows = all_sum(world, [total, rows], config.device)
        return EpochStats(total / all_rows, all_rows / elapsed, 1.0 - in_step / elapsed)
    return EpochStats(total / rows, rows / elapsed, 1.0 - in_step / elapsed)


def predict(model: AFM, data: BatchSource, device: str, batch_size: int = 8192) -> np.ndarray:
    """Raw scores (before the link) for every row, in order."""
    return predict_labelled(model, data, device, batch_size)[0]


# Floats of one evaluation batch's pair vectors: AFM's evaluation runs the readable equations,
# which build (B, P, k) pairs and their (B, P, t) hidden layer; at 741 pairs and k = 16 a batch
# of 8,192 rows would hold about 390 MB in each.
EVAL_PAIR_FLOATS = 1 << 24


def eval_batch_rows(model: AFM, batch_size: int) -> int:
    """Rows of an evaluation batch: `batch_size`, fewer where AFM's pair tensors would pass
    EVAL_PAIR_FLOATS (FM builds none)."""
    if not model.config.attention:
        return batch_size
    config = model.config
    per_row = len(model.pair_i) * max(config.embedding_dim, config.attention_dim)
    return max(1, min(batch_size, EVAL_PAIR_FLOATS // per_row))


@torch.no_grad()
def predict_labelled(
    model: AFM, data: BatchSource, device: str, batch_size: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Raw scores (before the link) and labels of every row, in order, in one pass."""
    model.eval()
    raws, labels = [], []
    for b in data.batches(eval_batch_rows(model, batch_size), shuffle=False):
        raws.append(model(b.index.to(device), b.value.to(device)).raw.cpu())
        labels.append(b.label)
    return torch.cat(raws).numpy(), torch.cat(labels).numpy()


def link(task: str, raw: np.ndarray, label_range: tuple[float, float]) -> np.ndarray:
    """The bundle's link: sigmoid for ctr, clip to the label range for ratings."""
    if task == "ctr":
        return np.asarray(1.0 / (1.0 + np.exp(-raw)))
    return np.asarray(np.clip(raw, *label_range))


def evaluate(model: AFM, data: BatchSource, config: TrainConfig) -> dict[str, float]:
    raw, label = predict_labelled(model, data, config.device)
    score = link(config.task, raw, config.label_range)
    return metrics.compute(config.task, label, score, config.label_range)


def fit(
    model: AFM,
    train: BatchSource,
    validation: BatchSource,
    config: TrainConfig,
    name: str = "model",
    start_is_candidate: bool = False,
    on_epoch: EpochHook | None = None,
    world: World = ONE_PROCESS,
    checkpoint_path: Path | None = None,
    resume: bool = False,
    interrupt_after: int | None = None,
) -> History:
    """Train with early stopping on the validation metric; the best epoch's weights are restored.

    `start_is_candidate`: the weights it starts from (a trained FM's, say) are epoch 0 of the
    choice, so a run that never beats them returns them rather than its least bad epoch; patience
    still counts against the trained epochs alone (`EarlyStopping`).
    `on_epoch`: called after each epoch's validation; when it returns True training stops there.
    `world`: under torchrun, the model trains wrapped in DistributedDataParallel; `train` yields
    this rank's share of each global batch (`training.distributed`). Rank 0 evaluates on the
    whole `validation` and its scores and decision to stop reach every rank, so all stop at the
    same epoch; only rank 0 keeps the best weights (the other ranks return the last ones).
    `checkpoint_path`: rank 0 saves the run's state there after each epoch; `resume` goes on from
    it (training.checkpoint). `interrupt_after`: stop after that epoch's checkpoint, as a run
    killed there would (History.interrupted; the weights are not the best's).
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(config.device)
    optimizer = make_optimizer(model, config)  # the tables' sparse flag is set before DDP's wrap
    net = ddp(model, world, config.device)
    metric, higher_is_better = metrics.main_metric(config.task)
    scheduler = (
        torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if higher_is_better else "min",
            factor=config.lr_decay,
            patience=config.lr_decay_patience - 1,  # torch decays after patience + 1 stale epochs
            threshold=0.0,  # any improvement counts, as for early stopping
        )
        if config.lr_decay < 1.0
        else None
    )
    history, speeds = History(), []
    # The best weights so far, on rank 0 alone (the others publish nothing): a copy while later
    # epochs may move the model away from them, None while they are the model's own weights. A
    # copy is the size of the tables, so none is kept when no epoch can follow (the last epoch,
    # or a run of one), and the old copy goes before a new one is made: peak memory is the budget
    # at scale (docs/experiments/streaming.md).
    best_state: dict[str, Any] | None = None
    if start_is_candidate and world.is_zero:
        best_state = copy.deepcopy(model.state_dict())
    stopping = EarlyStopping(config.patience, higher_is_better)
    saved = None
    if resume and checkpoint_path is not None:
        saved = broadcast(world, checkpoint.load(checkpoint_path) if world.is_zero else None)
        if saved is None:
            if world.is_zero:
                print(f"{name}: no checkpoint at {checkpoint_path}; training from the start")
        else:
            changed = checkpoint.differences(saved.config, config.to_dict())
            if changed:
                raise checkpoint.ResumeError(
                    f"--resume: {checkpoint_path} is a run with other settings ("
                    + "; ".join(changed)
                    + "): resume with that run's options, or train without --resume"
                )
    first = 1
    if saved is not None:
        model.load_state_dict(saved.model)
        optimizer.load_state_dict(saved.optimizer)
        if scheduler is not None and saved.scheduler is not None:
            scheduler.load_state_dict(saved.scheduler)
        stopping.best, stopping.best_trained, stopping.stale = (
            saved.stopping[k] for k in ("best", "best_trained", "stale")
        )
        history = History(**saved.history)
        best_state = saved.best_model if world.is_zero else None
        speeds = list(saved.speeds)
        generator.set_state(saved.generator)
        if len(saved.rng) == world.size:  # dropout's streams go on; another world draws anew
            checkpoint.set_rng_state(saved.rng[world.rank])
        first = config.epochs + 1 if saved.finished else saved.epoch + 1
        if world.is_zero:
            print(f"{name}: resumed after epoch {saved.epoch} from {checkpoint_path}", flush=True)
    elif start_is_candidate:
        history.best = broadcast(
            world, evaluate(model, validation, config) if world.is_zero else {}
        )
        stopping.best = history.best[metric]
        if world.is_zero:
            print(
                f"{name} start: " + "  ".join(f"valid {k} {v:.4f}" for k, v in history.best.items())
            )
    for epoch in range(first, config.epochs + 1):
        loss, speed, outside = train_one_epoch(
            model, optimizer, train, config, generator, f"{name} {epoch}/{config.epochs}", world,
            net,
        )  # fmt: skip
        speeds.append(speed)
        scores = broadcast(world, evaluate(model, validation, config) if world.is_zero else {})
        lr = optimizer.param_groups[0]["lr"]
        history.epochs.append(
            {"epoch": epoch, "train_loss": loss, "lr": lr}
            | {f"valid_{k}": v for k, v in scores.items()}
        )
        if world.is_zero:
            print(
                f"{name} epoch {epoch}: train loss {loss:.4f}  "
                + "  ".join(f"valid {k} {v:.4f}" for k, v in scores.items())
                + f"  lr {lr:.3g}  ({speed:,.0f} rows/s, {outside:.0%} outside the step)",
                flush=True,
            )
        improved = stopping.update(scores[metric])
        if improved:
            history.best, history.best_epoch = scores, epoch
        stop = stopping.should_stop
        if on_epoch is not None and on_epoch(epoch, scores):
            history.stopped_by_hook = stop = True
        stop = broadcast(world, stop)  # rank 0's decision: every rank ends at the same epoch
        interrupted = interrupt_after is not None and epoch == interrupt_after < config.epochs
        if improved and world.is_zero:
            best_state = None  # the model's weights are the best: the old copy goes first
            if not (stop or interrupted or epoch == config.epochs):
                best_state = copy.deepcopy(model.state_dict())  # the next epoch moves the model
        if not stop and scheduler is not None:
            scheduler.step(scores[metric])
        if checkpoint_path is not None:
            rng = gather(world, checkpoint.rng_state())
            if world.is_zero:
                checkpoint.save(
                    checkpoint_path,
                    checkpoint.TrainingState(
                        epoch, stop, config.to_dict(), world.size, model.state_dict(),
                        optimizer.state_dict(),
                        scheduler.state_dict() if scheduler is not None else None,
                        {"best": stopping.best, "best_trained": stopping.best_trained,
                         "stale": stopping.stale},
                        asdict(history), model.state_dict() if best_state is None else best_state,
                        speeds, generator.get_state(), rng,
                    ),
                )  # fmt: skip
        if stop:
            break
        if interrupted:
            history.interrupted = True
            return history
    if best_state is not None:
        model.load_state_dict(best_state)
    model.fold_batch_norm()  # a plain FM from here on: evaluation and export see no batch norm
    history.train_rows_per_second = float(np.median(speeds)) if speeds else 0.0
    return history


def ddp(model: AFM, world: World, device: str) -> torch.nn.Module | None:
    """The model wrapped in DistributedDataParallel under torchrun (None in one process): it
    averages the ranks' gradients in the backward pass, and starts every rank from rank 0's
    weights. Frozen parameters take no part."""
    if not world.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    index = torch.device(device).index
    return DistributedDataParallel(model, device_ids=None if index is None else [index])
