"""Data-parallel training under torchrun (training/distributed.py): real 2-process gloo runs as
subprocesses against the 1-process run with the same global batch and seed, one bundle published,
a resumed 2-process stream run against the uninterrupted one, and the refusals.

Tolerance of 2 processes against 1 (in memory, dropout 0): each step's rows are the same global
batch (`RankShare`) and the loss is scaled to its mean, so the runs differ only in float summation
order (the gradient summed per rank, then across ranks): about 1e-7 relative per step, which
Adam's updates carry on. Measured on these runs: train loss within 3e-8, validation AUC within
one pair of rows (5e-5). The bounds below leave room for other machines' float kernels. With
dropout each rank draws its own masks, and the runs part further (docs/training.md gives both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import bundle as bundles
from training import checkpoint
from training.cli import parse_args, train_options
from training.commands import require_world
from training.data import criteo_like
from training.distributed import World, from_environment

LOSS_TOLERANCE = 1e-5
AUC_TOLERANCE = 1e-2
MODEL = ["--embedding-dim", "8", "--attention-dim", "8", "--threads", "1", "--seed", "2"]
IN_MEMORY = ["--dataset", "synthetic", "--max-rows", "3000", "--epochs", "3",
             "--batch-size", "256", "--dropout", "0", "--name", "ddp", *MODEL]  # fmt: skip
STREAM_FIELDS = "I1:log,I2:log,I5:log,C1,C2,C5,C6,C9,C3:hash:512,C4:hash:512"


def torchrun(processes: int) -> list[str]:
    """torchrun next to this Python (its venv's script), else torch's own module; --standalone
    picks a free port, so runs side by side do not meet."""
    script = Path(sys.executable).with_name("torchrun")
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return [*launcher, "--standalone", "--nproc-per-node", str(processes)]


def run_train(args: list[str], processes: int | None) -> subprocess.CompletedProcess[str]:
    """`python -m training train ARGS`, alone (None) or under torchrun with `processes` ranks."""
    launcher = [sys.executable] if processes is None else torchrun(processes)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*launcher, "-m", "training", "train", *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def history(models: Path, name: str = "ddp") -> list[dict[str, float]]:
    manifest = json.loads((models / name / "1" / "bundle.json").read_text())
    return list(manifest["history"])


@pytest.fixture(scope="module")
def in_memory_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same training alone and as 2 torchrun processes; their models folders."""
    root = tmp_path_factory.mktemp("ddp")
    run_train([*IN_MEMORY, "--out", str(root / "one")], None)
    run_train([*IN_MEMORY, "--out", str(root / "two")], 2)
    return root / "one", root / "two"


def test_two_processes_match_one_epoch_by_epoch(in_memory_runs: tuple[Path, Path]) -> None:
    one, two = (history(models) for models in in_memory_runs)
    assert [e["epoch"] for e in one] == [e["epoch"] for e in two] == [1, 2, 3]
    for alone, shared in zip(one, two, strict=True):
        assert abs(alone["train_loss"] - shared["train_loss"]) < LOSS_TOLERANCE
        assert abs(alone["valid_auc"] - shared["valid_auc"]) < AUC_TOLERANCE
        assert abs(alone["valid_logloss"] - shared["valid_logloss"]) < LOSS_TOLERANCE * 10


def test_two_processes_publish_exactly_one_bundle(in_memory_runs: tuple[Path, Path]) -> None:
    _, two = in_memory_runs
    assert bundles.model_names(two) == ["ddp"]
    assert bundles.versions(two / "ddp") == [1]
    assert bundles.read(two / "ddp" / "1").manifest.training_config is not None
    saved = checkpoint.load(checkpoint.path_for(two, "ddp"))
    assert saved is not None and saved.world_size == 2 and saved.epoch == 3
    assert len(saved.rng) == 2  # each rank's dropout stream, to resume it


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Criteo-like rows in 2 Parquet shards of 3 row groups each."""
    folder = tmp_path_factory.mktemp("criteo") / "shards"
    criteo_like.write(folder, 6_000, shards=2, seed=1, row_group_rows=1_000)
    return folder


def test_two_process_stream_resumed_ends_where_the_uninterrupted_run_does(
    shards: Path, tmp_path: Path
) -> None:
    args = ["--stream", "--data", str(shards), "--fields", STREAM_FIELDS, "--epochs", "2",
            "--batch-size", "200", "--shuffle-rows", "1000", "--name", "ddp", *MODEL]  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_train([*args, "--out", str(whole)], 2)
    stopped = run_train([*args, "--out", str(parts), "--interrupt-after", "1"], 2)
    assert "stopped after epoch 1" in stopped.stdout
    assert not (parts / "ddp").exists()  # an interrupted run publishes nothing
    resumed = run_train([*args, "--out", str(parts), "--resume"], 2)
    assert "resumed after epoch 1" in resumed.stdout
    assert history(parts) == history(whole)
    test_scores = [bundles.read(models / "ddp" / "1").manifest.metrics for models in (whole, parts)]
    assert test_scores[0] == test_scores[1]
    assert bundles.versions(parts / "ddp") == [1]


def test_world_comes_from_torchruns_environment() -> None:
    assert from_environment({}) == World(0, 1, 0)
    assert from_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(3, 4, 1)


def test_a_global_batch_must_split_evenly_over_the_processes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    options = train_options(parse_args(["train", "--batch-size", "255"]))
    with pytest.raises(SystemExit) as stopped:
        require_world(options, World(0, 2, 0))
    assert "--batch-size 255" in str(stopped.value) and "multiple of 2" in str(stopped.value)
    require_world(options, World(0, 1, 0))  # one process takes any batch


def test_sparse_embeddings_on_nccl_are_refused_and_on_gloo_taken() -> None:
    cuda = train_options(parse_args(["train", "--sparse-embeddings", "--device", "cuda"]))
    with pytest.raises(SystemExit) as stopped:
        require_world(cuda, World(1, 2, 1))
    assert "NCCL" in str(stopped.value) and "--sparse-embeddings" in str(stopped.value)
    cpu = train_options(parse_args(["train", "--sparse-embeddings", "--batch-size", "256"]))
    require_world(cpu, World(1, 2, 1))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL, one each)")
def test_two_cuda_processes_train_on_nccl_and_match_one(tmp_path: Path) -> None:
    run_train([*IN_MEMORY, "--device", "cuda", "--out", str(tmp_path / "one")], None)
    run_train([*IN_MEMORY, "--device", "cuda", "--out", str(tmp_path / "two")], 2)
    for alone, shared in zip(history(tmp_path / "one"), history(tmp_path / "two"), strict=True):
        assert abs(alone["train_loss"] - shared["train_loss"]) < LOSS_TOLERANCE * 10
        assert abs(alone["valid_auc"] - shared["valid_auc"]) < AUC_TOLERANCE
