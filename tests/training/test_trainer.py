"""The training loop's schedule: learning-rate decay on plateaus and early stopping."""

import torch

from training import trainer
from training.model import AFM, AFMConfig
from training.trainer import (
    EarlyStopping,
    Tensors,
    TrainConfig,
    eval_batch_rows,
    fit,
    loss_fn,
    make_optimizer,
    predict_labelled,
    train_one_epoch,
)


def noise_data(rows: int, seed: int) -> Tensors:
    """Labels unrelated to the features: validation can only wander, so plateaus come quickly."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 30, (rows, 3), generator=g) + torch.tensor([0, 30, 60])
    return Tensors(index, torch.ones(rows, 3), torch.randint(0, 2, (rows,), generator=g) * 2.0 - 1)


def test_learning_rate_decays_after_stale_epochs_and_best_weights_return():
    model = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=4, attention=False))
    config = TrainConfig(
        task="rating", epochs=12, batch_size=64, lr=0.05, patience=12, lr_decay=0.5,
        lr_decay_patience=2,
    )  # fmt: skip
    history = fit(model, noise_data(512, 0), noise_data(256, 1), config)

    expected, best, stale = config.lr, float("inf"), 0
    for epoch in history.epochs:  # each epoch records the rate it trained with
        assert epoch["lr"] == expected
        if epoch["valid_rmse"] < best:
            best, stale = epoch["valid_rmse"], 0
        else:
            stale += 1
            if stale == config.lr_decay_patience:
                expected, stale = expected * config.lr_decay, 0
    assert history.epochs[-1]["lr"] < config.lr  # it did decay on this noise
    assert history.best["rmse"] == min(e["valid_rmse"] for e in history.epochs)


def test_constant_rate_by_default_and_early_stopping_after_patience():
    model = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=4, attention=False))
    config = TrainConfig(task="rating", epochs=30, batch_size=64, lr=0.05, patience=2)
    history = fit(model, noise_data(512, 0), noise_data(256, 1), config)
    assert {e["lr"] for e in history.epochs} == {config.lr}
    assert len(history.epochs) == history.best_epoch + config.patience < config.epochs


def test_a_started_model_that_no_epoch_improves_is_returned_as_it_started():
    model = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=4, attention=False))
    train, validation = noise_data(512, 0), noise_data(256, 1)
    # a step far too large: every epoch lands worse than the start
    config = TrainConfig(task="rating", epochs=5, batch_size=64, lr=5.0, patience=2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, train, validation, config, start_is_candidate=True)
    assert history.best_epoch == 0
    assert all(e["valid_rmse"] > history.best["rmse"] for e in history.epochs)
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    # without it the least bad epoch comes back
    model.load_state_dict(start)
    assert fit(model, train, validation, config).best_epoch >= 1


def test_patience_runs_against_the_trained_epochs_while_the_start_stays_a_candidate():
    # RMSE, lower is better; a trained start at 0.30 that the first epochs fall below
    stopping = EarlyStopping(patience=2, higher_is_better=False, best=0.30)
    kept = [stopping.update(score) for score in (0.34, 0.33, 0.32, 0.31, 0.29)]
    assert kept == [False, False, False, False, True] and not stopping.should_stop
    assert [stopping.update(score) for score in (0.295, 0.292)] == [False, False]
    assert stopping.should_stop and stopping.best == 0.29
    # without a start the first epoch is the first best
    assert EarlyStopping(patience=1, higher_is_better=True).update(0.5)


def test_the_attention_networks_first_layer_takes_its_own_rate():
    torch.manual_seed(0)
    model = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=4, attention_dim=3))
    config = TrainConfig(task="rating", lr=0.1, optimizer="adagrad", attention_lr=0.01)
    with torch.no_grad():  # embeddings large enough that no gradient is near Adagrad's eps
        model.embedding.weight.normal_(0, 1)
    optimizer = make_optimizer(model, config)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    data = noise_data(64, 0)
    loss_fn(config.task, model(data.index, data.value).raw, data.label).backward()
    optimizer.step()
    # Adagrad's first step moves each entry by its group's full rate (less where |g| nears eps)
    for name, p in model.named_parameters():
        step = (p.detach() - before[name]).abs().max().item()
        rate = 0.01 if name.startswith("attention_w.") else 0.1
        assert 0.99 * rate < step <= rate * (1 + 1e-6), name
    fm = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=4, attention=False))
    assert len(make_optimizer(fm, config).param_groups) == 1  # FM has no attention network


def test_an_epoch_reports_its_speed_and_the_share_spent_outside_the_step():
    model = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=4, attention_dim=2))
    config = TrainConfig(task="rating", batch_size=64)
    stats = train_one_epoch(
        model, make_optimizer(model, config), noise_data(300, 0), config, torch.Generator()
    )
    assert stats.rows_per_second > 0 and 0.0 <= stats.outside_step < 1.0
    assert stats.loss > 0


def test_batches_cover_every_row_once_in_shuffled_order():
    data = noise_data(300, 0)
    data.label = torch.arange(300.0)
    labels = torch.cat([b.label for b in data.batches(64, True, torch.Generator().manual_seed(1))])
    assert sorted(labels.tolist()) == list(range(300)) and labels.tolist() != list(range(300))


def test_evaluation_batches_bound_afms_pair_tensors_and_score_every_row_alike(monkeypatch):
    afm = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=8, attention_dim=4))
    fm = AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=8, attention=False))
    data = noise_data(300, 0)
    whole = predict_labelled(afm, data, "cpu")
    monkeypatch.setattr(trainer, "EVAL_PAIR_FLOATS", 3 * 8 * 64)  # 3 pairs of k = 8: 64 rows
    assert eval_batch_rows(afm, 8192) == 64 and eval_batch_rows(fm, 8192) == 8192
    assert eval_batch_rows(afm, 16) == 16
    raw, label = predict_labelled(afm, data, "cpu")
    assert torch.allclose(torch.from_numpy(raw), torch.from_numpy(whole[0]), atol=1e-6)
    assert (label == whole[1]).all() and len(raw) == 300
