"""Fixtures that build tiny real artifacts: a synthetic AFM trained for one epoch, exported, published."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.cli import parse_args, train_options
from training.commands import train


def train_tiny(models_dir: Path, *extra: str) -> Path:
    """Train a quick synthetic model with the real CLI and return its published bundle folder."""
    argv = ["train", "--quick", "--threads", "1", "--out", str(models_dir), *extra]
    return train(train_options(parse_args(argv)))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding one tiny AFM bundle (ctr), `synthetic-afm/1`."""
    root = tmp_path_factory.mktemp("models")
    train_tiny(root, "--max-rows", "3000", "--embedding-dim", "8")
    return root


@pytest.fixture(scope="session")
def tiny_bundle(models_dir: Path) -> Path:
    return models_dir / "synthetic-afm" / "1"
