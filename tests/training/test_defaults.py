"""The training defaults: weight decay unless the optimizer takes none, and where they apply."""

import pytest

from tests.conftest import train_tiny
from training import bundle, recipes
from training.commands import DEFAULT_WEIGHT_DECAY, TrainOptions
from training.tune import given_params


def test_weight_decay_defaults_to_the_own_data_value_and_to_zero_with_sparse_tables():
    assert TrainOptions().resolved_weight_decay() == DEFAULT_WEIGHT_DECAY > 0
    assert TrainOptions(sparse_embeddings=True).resolved_weight_decay() == 0.0
    assert TrainOptions(weight_decay=0.0).resolved_weight_decay() == 0.0
    assert TrainOptions(weight_decay=3e-5, sparse_embeddings=True).resolved_weight_decay() == 3e-5


def test_a_default_run_records_the_weight_decay_it_trained_with(tmp_path):
    dense = bundle.read(train_tiny(tmp_path, "--name", "dense")).manifest.training_config
    sparse = bundle.read(
        train_tiny(tmp_path, "--name", "sparse", "--sparse-embeddings")
    ).manifest.training_config
    assert dense is not None and sparse is not None
    assert dense.weight_decay == DEFAULT_WEIGHT_DECAY
    assert sparse.weight_decay == 0.0


def test_weight_decay_with_sparse_tables_is_refused_before_training(tmp_path):
    with pytest.raises(SystemExit, match=r"--weight-decay 0\.0001 with --sparse-embeddings"):
        train_tiny(tmp_path, "--sparse-embeddings", "--weight-decay", "1e-4")
    assert not (tmp_path / "synthetic-afm").exists()


def test_the_frappe_recipe_keeps_the_papers_regularisation():
    recipe = recipes.frappe()
    assert recipe.fm.weight_decay == recipe.afm.weight_decay == 0.0


def test_tune_starts_from_the_weight_decay_train_would_use():
    assert given_params(TrainOptions(), 256)["weight_decay"] == DEFAULT_WEIGHT_DECAY
    assert "weight_decay" not in given_params(TrainOptions(sparse_embeddings=True), 256)
