"""The bundle's pictures: the learning curve and the field-pair attention heatmap."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt
import numpy as np


def learning_curve(epochs: list[dict[str, float]], metric: str, path: Path) -> None:
    x = [e["epoch"] for e in epochs]
    fig, loss_axis = plt.subplots(figsize=(6, 4))
    loss_axis.plot(x, [e["train_loss"] for e in epochs], "o-", color="tab:blue", label="train loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("train loss", color="tab:blue")
    metric_axis = loss_axis.twinx()
    metric_axis.plot(x, [e[f"valid_{metric}"] for e in epochs], "s-", color="tab:red")
    metric_axis.set_ylabel(f"validation {metric}", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attention_heatmap(
    fields: list[str], pairs: list[list[str]], mean_attention: np.ndarray, path: Path
) -> None:
    position = {name: i for i, name in enumerate(fields)}
    grid = np.full((len(fields), len(fields)), np.nan)
    for (a, b), weight in zip(pairs, mean_attention, strict=True):
        grid[position[a], position[b]] = grid[position[b], position[a]] = weight
    fig, axis = plt.subplots(figsize=(1 + 0.6 * len(fields), 0.8 + 0.6 * len(fields)))
    image = axis.imshow(grid, cmap="viridis")
    axis.set_xticks(range(len(fields)), fields, rotation=60, ha="right")
    axis.set_yticks(range(len(fields)), fields)
    axis.set_title("mean attention per field pair (validation)")
    fig.colorbar(image, ax=axis)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
