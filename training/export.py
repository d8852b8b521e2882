"""Export a trained AFM/FM to ONNX (DESIGN.md, contract 2) and publish it as a bundle."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from training import bundle
from training.bundle.features import FeatureEncoder
from training.model import AFM, AFMConfig

OPSET = 18


class WithLink(nn.Module):
    """The model plus its link, returning the five contract outputs in order."""

    def __init__(self, model: AFM, task: str, label_range: tuple[float, float]) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.low, self.high = label_range

    def forward(
        self, feature_index: torch.Tensor, feature_value: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = self.model(feature_index, feature_value)
        score = torch.sigmoid(out.raw) if self.task == "ctr" else out.raw.clamp(self.low, self.high)
        return score, out.raw, out.attention, out.pair_contribution, out.linear_contribution


def export_onnx(model: AFM, task: str, label_range: tuple[float, float], path: Path) -> None:
    """Write the graph with a dynamic batch axis and check it with onnx.checker."""
    wrapped = WithLink(model.cpu().eval(), task, label_range)
    num_fields = model.config.num_fields
    example = (torch.zeros(2, num_fields, dtype=torch.long), torch.ones(2, num_fields))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own deprecation chatter
        torch.onnx.export(
            wrapped,
            example,
            str(path),
            input_names=list(bundle.INPUTS),
            output_names=list(bundle.OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (*bundle.INPUTS, *bundle.OUTPUTS)},
            opset_version=OPSET,
            dynamo=False,
        )
    # checked from the file: a loaded copy of the graph, and the checker's serialised one, would
    # each hold every weight again (hundreds of MB for a table of millions of rows)
    onnx.checker.check_model(str(path), full_check=True)


def global_attention(
    model: AFM, index: np.ndarray, value: np.ndarray, batch_size: int = 8192
) -> np.ndarray:
    """Mean attention per pair over the given rows (the validation split): (P,)."""
    model.eval()
    total = torch.zeros(len(model.pair_i))
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            out = model(
                torch.from_numpy(index[start : start + batch_size]),
                torch.from_numpy(value[start : start + batch_size]),
            )
            total += out.attention.sum(0)
    return (total / max(len(index), 1)).numpy()


def mean_attention(model: AFM, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """Mean attention per pair over (index, value) batches (the validation split's): (P,)."""
    model.eval()
    total, rows = torch.zeros(len(model.pair_i)), 0
    with torch.no_grad():
        for index, value in batches:
            total += model(index, value).attention.sum(0)
            rows += len(index)
    return (total / max(rows, 1)).numpy()


def pair_names(model: AFM, field_names: list[str]) -> list[list[str]]:
    """The model's pair order as field-name pairs, as bundle.json and the plots list them."""
    rows, cols = model.pair_i.tolist(), model.pair_j.tolist()
    return [[field_names[i], field_names[j]] for i, j in zip(rows, cols, strict=True)]


def publish_bundle(
    model: AFM,
    encoder: FeatureEncoder,
    models_dir: Path,
    name: str,
    task: str,
    label_range: tuple[float, float],
    mean_attention: np.ndarray,
    extras: dict[str, Any],
    write_plots: Any = None,
) -> Path:
    """Export, checkpoint and describe the model, then publish it as the next version of `name`."""
    model = model.cpu().eval()
    names = encoder.names
    pairs = pair_names(model, names)
    link = (
        {"kind": "sigmoid"}
        if task == "ctr"
        else {"kind": "clip", "min": label_range[0], "max": label_range[1]}
    )
    manifest = {
        "task": task,
        "model": "afm" if model.config.attention else "fm",
        "link": link,
        "label_range": list(label_range),
        "num_features": encoder.num_features,
        "fields": encoder.fields,
        "pairs": pairs,
        "io": bundle.io_signature(len(names), len(pairs)),
        "opset": OPSET,
        "bias": float(model.bias.item()),
        "model_config": model.config.to_dict(),
        "global_attention": [
            {"fields": pair, "mean_attention": float(a)}
            for pair, a in zip(pairs, mean_attention, strict=True)
        ],
        **extras,
    }

    def write(folder: Path) -> None:
        export_onnx(model, task, label_range, folder / bundle.GRAPH)
        torch.save(
            {"model_config": model.config.to_dict(), "state_dict": model.state_dict()},
            folder / "checkpoint.pt",
        )
        if write_plots is not None:
            write_plots(folder)

    return bundle.publish(models_dir, name, manifest, write)


def load_checkpoint(bundle_dir: Path) -> AFM:
    """Rebuild the PyTorch model of a published bundle from the config saved beside its weights."""
    saved = torch.load(Path(bundle_dir) / "checkpoint.pt", weights_only=True)
    model = AFM(AFMConfig(**saved["model_config"]))
    model.load_state_dict(saved["state_dict"])
    return model
