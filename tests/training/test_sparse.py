"""Sparse embeddings (`--sparse-embeddings`): the tables' sparse gradients equal the dense ones
through the model's own autograd (PairLogits included), their optimizers touch only the rows a
batch uses, and train publishes with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.model import AFM, AFMConfig, PairLogits
from training.trainer import RowwiseSparseAdam, SparseAndDense, TrainConfig, make_optimizer

FIELDS, FEATURES = 6, 500


def batch(rows: int, seed: int = 0, features: int = FEATURES) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, features, (rows, FIELDS), generator=generator)
    value = torch.rand(rows, FIELDS, generator=generator) + 0.5
    return index, value


def twin_models(attention: bool) -> tuple[AFM, AFM]:
    torch.manual_seed(0)
    dense = AFM(AFMConfig(FEATURES, FIELDS, embedding_dim=8, attention_dim=8, attention=attention))
    with torch.no_grad():
        dense.linear.weight.normal_()  # zeros at the start would hide a wrong linear gradient
        dense.embedding.weight.normal_(std=0.3)
    sparse = AFM(dense.config)
    sparse.load_state_dict(dense.state_dict())
    sparse.embedding.sparse = sparse.linear.sparse = True
    return dense, sparse


@pytest.mark.parametrize(
    ("attention", "chunked"), [(True, True), (True, False), (False, False)],
    ids=["afm-pair-logits", "afm-one-pass", "fm"],
)  # fmt: skip
def test_sparse_table_gradients_equal_the_dense_ones(
    attention: bool, chunked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunked:  # small chunks, so a small batch goes through PairLogits' own backward
        monkeypatch.setattr(PairLogits, "CHUNK_FLOATS", 64)
    index, value = batch(64)
    dense, sparse = twin_models(attention)
    for model in (dense, sparse):
        model.train()
        assert PairLogits.pays(torch.zeros(64, FIELDS, 8), 15) is chunked
        model(index, value).raw.sigmoid().square().sum().backward()
    for table in ("embedding", "linear"):
        got = getattr(sparse, table).weight.grad
        want = getattr(dense, table).weight.grad
        assert got.is_sparse and not want.is_sparse
        torch.testing.assert_close(got.to_dense(), want, rtol=1e-5, atol=1e-7)
        assert want.abs().sum() > 0
    if attention:
        torch.testing.assert_close(sparse.attention_w.weight.grad, dense.attention_w.weight.grad)


def train_steps(
    model: AFM, config: TrainConfig, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    optimizer = make_optimizer(model, config)
    model.train()
    for index, value in batches:
        optimizer.zero_grad()
        model(index, value).raw.sigmoid().sum().backward()
        optimizer.step()


@pytest.mark.parametrize(("attention", "steps"), [(True, 1), (False, 3)], ids=["afm", "fm"])
def test_sparse_adagrad_steps_as_dense_adagrad_does(attention: bool, steps: int) -> None:
    """Adagrad leaves a row without gradient where it is, so its sparse update is the same.
    (AFM for one step: Adagrad's first step moves an attention bias by the whole rate whatever
    its gradient's size, so float rounding in the tables' update can move it later.)"""
    batches = [batch(32, seed) for seed in range(steps)]
    dense, sparse = twin_models(attention)
    train_steps(dense, TrainConfig(optimizer="adagrad", lr=0.05), batches)
    train_steps(sparse, TrainConfig(optimizer="adagrad", lr=0.05, sparse_embeddings=True), batches)
    assert sparse.embedding.sparse and not dense.embedding.sparse
    for name, parameter in dense.named_parameters():
        torch.testing.assert_close(dict(sparse.named_parameters())[name], parameter, msg=name)


def test_sparse_adam_moves_only_the_rows_a_batch_uses() -> None:
    """Dense Adam's momentum keeps moving rows of earlier batches; SparseAdam does not."""
    first, second = batch(16, 0, features=100), batch(16, 1, features=100)
    second = (second[0] + 100, second[1])  # rows 100..199: none of the first batch's
    dense, sparse = twin_models(attention=True)
    for model, on in ((dense, False), (sparse, True)):
        config = TrainConfig(lr=0.01, sparse_embeddings=on)
        optimizer = make_optimizer(model, config)
        assert isinstance(optimizer, SparseAndDense) is on
        model.train()
        for number, (index, value) in enumerate((first, second)):
            before = model.embedding.weight.detach().clone()
            optimizer.zero_grad()
            model(index, value).raw.sigmoid().sum().backward()
            optimizer.step()
            moved = (model.embedding.weight != before).any(1)
            used = torch.zeros(FEATURES, dtype=torch.bool)
            used[index.flatten()] = True
            if number == 1:
                earlier = moved[:100].any()
                assert bool(earlier) is not on  # dense: the first batch's rows move on
            assert moved[used].all() and not moved[~used & (torch.arange(FEATURES) >= 200)].any()


@pytest.mark.parametrize("maximize", [False, True])
def test_rowwise_sparse_adam_steps_as_torchs_sparse_adam_bit_for_bit(maximize: bool) -> None:
    """Repeated rows in a batch, rows of one batch and not the next, a step with no rows, and a
    rate lowered between steps; the state dicts load into each other."""
    torch.manual_seed(0)
    tables = [torch.nn.Embedding(300, 4, sparse=True) for _ in range(2)]
    tables[1].load_state_dict(tables[0].state_dict())
    optimizers = [
        torch.optim.SparseAdam(tables[0].parameters(), lr=0.05, maximize=maximize),
        RowwiseSparseAdam(tables[1].parameters(), lr=0.05, maximize=maximize),
    ]
    generator = torch.Generator().manual_seed(1)
    for number in range(6):
        rows = torch.randint(0, 150 * (1 + number % 2), (40, 5), generator=generator)
        rows[:, 0] = 7  # one row many times in a batch
        weight = torch.randn(40, 5, 4, generator=generator)
        for table, optimizer in zip(tables, optimizers, strict=True):
            if number == 3:
                for group in optimizer.param_groups:
                    group["lr"] = 0.01
            optimizer.zero_grad()
            used = rows[:0] if number == 4 else rows  # a step with no rows
            (table(used) * weight[: len(used)]).sum().backward()
            optimizer.step()
        assert torch.equal(tables[0].weight, tables[1].weight), number
    ours, torchs = optimizers[1].state_dict(), optimizers[0].state_dict()
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(
            torch.as_tensor(ours["state"][0][key]), torch.as_tensor(torchs["state"][0][key])
        )
    optimizers[0].load_state_dict(ours)
    assert optimizers[0].state[tables[0].weight]["step"] == 6


def test_rowwise_sparse_adam_refuses_a_dense_gradient() -> None:
    parameter = torch.nn.Parameter(torch.zeros(3, 2))
    RowwiseSparseAdam([parameter]).step()  # no gradient yet: nothing moves
    assert not parameter.detach().any()
    parameter.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="sparse gradients only"):
        RowwiseSparseAdam([parameter]).step()


def test_sparse_embeddings_train_with_the_rowwise_sparse_adam() -> None:
    optimizer = make_optimizer(twin_models(attention=False)[1], TrainConfig(sparse_embeddings=True))
    assert isinstance(optimizer, SparseAndDense)
    assert isinstance(optimizer.tables, RowwiseSparseAdam)


def test_a_scheduler_lowers_both_optimizers_rates() -> None:
    sparse = twin_models(attention=True)[1]
    optimizer = make_optimizer(sparse, TrainConfig(lr=0.01, sparse_embeddings=True))
    assert isinstance(optimizer, SparseAndDense)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    for _ in range(3):
        scheduler.step(1.0)
    assert optimizer.tables.param_groups[0]["lr"] < 0.01
    assert optimizer.dense.param_groups[0]["lr"] == optimizer.tables.param_groups[0]["lr"]


def test_sparse_embeddings_refuse_weight_decay() -> None:
    model = twin_models(attention=False)[0]
    with pytest.raises(ValueError, match="no weight decay"):
        make_optimizer(model, TrainConfig(weight_decay=1e-4, sparse_embeddings=True))


def test_train_with_sparse_embeddings_records_them(tmp_path: Path) -> None:
    from tests.conftest import train_tiny

    path = train_tiny(tmp_path, "--max-rows", "1500", "--embedding-dim", "4", "--sparse-embeddings")
    config = json.loads((path / "bundle.json").read_text())["training_config"]
    assert config["sparse_embeddings"] is True
