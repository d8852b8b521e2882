"""A run's state after each epoch, so that `train --resume` goes on where an interrupted run stopped.

One file per run, `<--out>/.checkpoints/<name>/last.pt` (the models folder is not in git, and the
service and the bundle store pass over folders whose names start with a dot), rewritten after each
epoch: the model, the optimizer and the rate schedule, early stopping's counts and the best
epoch's weights, the history so far, the shuffling generator (which seeds each epoch's order, so
an epoch boundary is also the stream's position) and every rank's RNG state (dropout).
A resumed run draws the same numbers from there on as the run that was interrupted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FOLDER = ".checkpoints"
FILE = "last.pt"
# TrainConfig entries a resumed run may change: more epochs go on past the last cap
MAY_CHANGE = frozenset({"epochs"})


class ResumeError(ValueError):
    """A checkpoint this run cannot go on from."""


def path_for(out: Path, name: str) -> Path:
    """Where the run publishing `name` into `out` keeps its checkpoint."""
    return Path(out) / FOLDER / name / FILE


@dataclass
class TrainingState:
    """Everything `trainer.fit` needs to go on after `epoch` epochs."""

    epoch: int  # epochs completed
    finished: bool  # early stopping (or a hook) ended the run at `epoch`
    config: dict[str, Any]  # TrainConfig.to_dict() of the run
    world_size: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    stopping: dict[str, Any]  # EarlyStopping's best, best_trained, stale
    history: dict[str, Any]  # History's epochs, best_epoch, best, stopped_by_hook
    best_model: dict[str, Any]  # the best epoch's weights so far
    speeds: list[float]  # rows/s of each epoch so far
    generator: torch.Tensor  # the shuffling generator's state
    rng: list[dict[str, Any]] = field(default_factory=list)  # per rank: rng_state()


def rng_state() -> dict[str, Any]:
    """This process's torch RNG state (CPU, and each CUDA device when there are any)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, state: TrainingState) -> None:
    """Write the state whole or not at all: a run killed while writing leaves the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state.__dict__, partial)
    os.replace(partial, path)


def load(path: Path) -> TrainingState | None:
    """The saved state; None when the run has none yet."""
    if not path.is_file():
        return None
    return TrainingState(**torch.load(path, map_location="cpu", weights_only=False))


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The training settings in which the saved run and this one differ (those a resumed run may
    change left out), as `name: saved -> now`."""
    return [
        f"{key}: {saved.get(key)!r} -> {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if key not in MAY_CHANGE and saved.get(key) != current.get(key)
    ]
