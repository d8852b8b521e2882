"""`train --resume` (training/checkpoint.py): a run stopped after an epoch and resumed ends exactly
where the uninterrupted run does, in memory and streamed, in one process (the two-process case is
in test_distributed.py); a checkpoint of other settings is refused with the settings named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training import bundle as bundles
from training import checkpoint
from training.cli import parse_args, train_options
from training.commands import train
from training.data import criteo_like

IN_MEMORY = ["--dataset", "synthetic", "--max-rows", "2000", "--epochs", "3", "--batch-size",
             "128", "--embedding-dim", "4", "--attention-dim", "4", "--threads", "1",
             "--name", "resumed"]  # fmt: skip


def run(*argv: str) -> Path:
    return train(train_options(parse_args(["train", *argv])))


def manifest(path: Path) -> dict[str, object]:
    """What a run ends with: its epochs, best epoch and test scores."""
    saved = json.loads((path / "bundle.json").read_text())
    return {key: saved[key] for key in ("history", "best_epoch", "metrics")}


def test_in_memory_run_resumed_ends_where_the_uninterrupted_one_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole = run(*IN_MEMORY, "--out", str(tmp_path / "whole"))
    parts = tmp_path / "parts"
    run(*IN_MEMORY, "--out", str(parts), "--interrupt-after", "2")
    assert "stopped after epoch 2" in capsys.readouterr().out
    assert not (parts / "resumed").exists()
    saved = checkpoint.load(checkpoint.path_for(parts, "resumed"))
    assert saved is not None and saved.epoch == 2 and not saved.finished
    resumed = run(*IN_MEMORY, "--out", str(parts), "--resume")
    assert "resumed after epoch 2" in capsys.readouterr().out
    assert manifest(resumed) == manifest(whole)
    assert (resumed / "model.onnx").read_bytes() == (whole / "model.onnx").read_bytes()


def test_stream_run_resumed_ends_where_the_uninterrupted_one_does(tmp_path: Path) -> None:
    data = tmp_path / "rows"
    criteo_like.write(data, 2_000, shards=2, seed=3, row_group_rows=300)
    args = ["--stream", "--data", str(data), "--fields", "I1:log,I2:log,C1,C2,C6,C3:hash:64",
            "--epochs", "2", "--batch-size", "128", "--shuffle-rows", "300", "--embedding-dim",
            "4", "--attention-dim", "4", "--threads", "1", "--name", "resumed"]  # fmt: skip
    whole = run(*args, "--out", str(tmp_path / "whole"))
    run(*args, "--out", str(tmp_path / "parts"), "--interrupt-after", "1")
    resumed = run(*args, "--out", str(tmp_path / "parts"), "--resume")
    assert manifest(resumed) == manifest(whole)


def test_resume_with_more_epochs_goes_on_as_one_longer_run(tmp_path: Path) -> None:
    longer = run(*IN_MEMORY, "--out", str(tmp_path / "longer"))
    shorter = [*IN_MEMORY[:5], "2", *IN_MEMORY[6:]]  # --epochs 2
    first = run(*shorter, "--out", str(tmp_path / "more"))
    assert len(json.loads((first / "bundle.json").read_text())["history"]) == 2
    more = run(*IN_MEMORY, "--out", str(tmp_path / "more"), "--resume")
    assert more.name == "2"  # the first run's bundle stays; the longer one is the next version
    assert manifest(more) == manifest(longer)


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path: Path) -> None:
    run(*IN_MEMORY, "--out", str(tmp_path), "--interrupt-after", "1")
    with pytest.raises(SystemExit) as refused:
        run(*IN_MEMORY, "--out", str(tmp_path), "--resume", "--lr", "0.01")
    message = str(refused.value)
    assert "--resume" in message and "lr: 0.005 -> 0.01" in message
    assert not (tmp_path / "resumed").exists()


def test_resume_without_a_checkpoint_trains_from_the_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = run(*IN_MEMORY, "--epochs", "1", "--out", str(tmp_path), "--resume")
    assert "no checkpoint at" in capsys.readouterr().out
    assert bundles.versions(path.parent) == [1]
