"""The data sets the project knows: `synthetic` (generated), `frappe` and `ml-100k` (read from a
folder), and `files` (a user's own splits). Each loads into `Splits` (`training.data.splits`)."""

from __future__ import annotations

import os
from pathlib import Path

from training.data import frappe, movielens, synthetic
from training.data.splits import Splits, Task, derived

DATASETS = ("synthetic", "frappe", "ml-100k", "files")

__all__ = ["DATASETS", "Splits", "Task", "default_data_dir", "load"]


def default_data_dir() -> Path:
    """AFM_DATA_DIR, else ../shared/data where it exists, else ./data (ignored by git)."""
    if env := os.environ.get("AFM_DATA_DIR"):
        return Path(env)
    shared = Path(__file__).resolve().parents[3] / "shared" / "data"
    return shared if shared.is_dir() else Path("data")


def load(
    name: str,
    task: Task,
    data_dir: Path | None = None,
    data_format: str = "csv",
    max_rows: int | None = None,
    seed: int = 0,
    download: bool = False,
    drop_used_negatives: bool = False,
    paper_negatives: bool = False,
) -> Splits:
    """Load a named data set (`files` has its own loader, `files.load`); `max_rows` caps every
    split (quick runs)."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if name == "synthetic":
        splits = synthetic.load(task, rows=max_rows or 60_000, seed=seed)
    elif name == "frappe":
        splits = frappe.load(
            task, data_dir / "frappe", data_format, download, drop_used_negatives, paper_negatives
        )
    elif name == "ml-100k":
        splits = movielens.load(task, data_dir / "ml-100k", seed, download)
    else:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if max_rows:
        for part in ("train", "validation", "test"):
            setattr(splits, part, getattr(splits, part).take(slice(0, max_rows)))
        splits.fingerprint = derived(splits.fingerprint, f"max-rows={max_rows}")
    return splits
