"""Evaluation metrics, torch-free so a bundle can be judged from its ONNX graph alone."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def compute(
    task: str, label: np.ndarray, score: np.ndarray, label_range: tuple[float, float]
) -> dict[str, float]:
    """ctr: AUC and log loss of probabilities; rating: RMSE and MAE of ratings clipped to the label
    range, as the paper clips before computing RMSE."""
    label = np.asarray(label, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if task == "ctr":
        probability = np.clip(score, 1e-7, 1 - 1e-7)
        return {
            "auc": float(roc_auc_score(label, probability))
            if len(np.unique(label)) > 1
            else float("nan"),
            "logloss": float(log_loss(label, probability, labels=[0, 1])),
        }
    clipped = np.clip(score, *label_range)
    return {
        "rmse": float(np.sqrt(np.mean((clipped - label) ** 2))),
        "mae": float(np.mean(np.abs(clipped - label))),
    }


def main_metric(task: str) -> tuple[str, bool]:
    """The metric early stopping watches, and whether higher is better."""
    return ("auc", True) if task == "ctr" else ("rmse", False)
