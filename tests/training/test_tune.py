"""`python -m training tune`: the search, its pruning through fit's epoch hook, and the history the
published bundle carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from pydantic import ValidationError

from tests.conftest import train_tiny
from tests.training.test_readers import write_same_rows
from tests.training.test_trainer import noise_data
from training import bundle
from training.__main__ import main
from training.bundle.manifest import Manifest, Tuning
from training.cli import parse_args, train_options
from training.commands import DataOptions, TrainOptions
from training.model import AFM, AFMConfig
from training.trainer import TrainConfig, fit
from training.tune import tune, tuning_summary

# a tiny search: 3 epochs per trial on a few hundred synthetic rows, one thread
TINY = ["--max-rows", "600", "--epochs", "3", "--embedding-dim", "8", "--attention-dim", "8",
        "--threads", "1"]  # fmt: skip


def manifest_of(path: Path) -> Manifest:
    return bundle.read(path).manifest


def tuning_of(manifest: Manifest) -> Tuning:
    assert manifest.tuning is not None
    return manifest.tuning


def test_an_epoch_hook_sees_every_epoch_and_stops_fit_when_it_says_so():
    seen: list[tuple[int, float]] = []

    def stop_after_three(epoch: int, scores: dict[str, float]) -> bool:
        seen.append((epoch, scores["rmse"]))
        return epoch == 3

    def model() -> AFM:
        torch.manual_seed(0)
        return AFM(AFMConfig(num_features=90, num_fields=3, embedding_dim=4, attention=False))

    config = TrainConfig(task="rating", epochs=6, batch_size=64, lr=0.01, patience=6)
    history = fit(
        model(), noise_data(512, 0), noise_data(256, 1), config, on_epoch=stop_after_three
    )
    assert history.stopped_by_hook and len(history.epochs) == 3
    assert seen == [(e["epoch"], e["valid_rmse"]) for e in history.epochs]
    assert history.best["rmse"] == min(rmse for _, rmse in seen)  # the best epoch still returns

    unhooked = fit(model(), noise_data(512, 0), noise_data(256, 1), config)
    assert not unhooked.stopped_by_hook and len(unhooked.epochs) > 3
    assert unhooked.epochs[:3] == history.epochs  # the hook changes nothing but the stop


def test_tune_publishes_its_best_trial_with_every_trial_and_trial_0_is_train_s_model(
    tmp_path, capsys
):
    main(["tune", *TINY, "--trials", "4", "--out", str(tmp_path), "--name", "tuned"])
    out = capsys.readouterr().out
    path = tmp_path / "tuned" / "1"
    manifest = manifest_of(path)
    tuning = tuning_of(manifest)
    assert [t.number for t in tuning.trials] == [0, 1, 2, 3]
    assert {t.state for t in tuning.trials} <= {"complete", "pruned"}
    assert all(1 <= t.epochs <= 3 for t in tuning.trials)
    assert tuning.metric == "auc" and tuning.direction == "maximize"
    assert tuning.budget_trials == 4 and tuning.pruner.startswith("MedianPruner")

    # trial 0 is the settings as given, trained as `train` trains them
    given = tuning.trials[tuning.defaults_trial]
    assert given.number == 0 and given.state == "complete" and given.epochs == 3
    assert given.params == {"lr": 0.005, "batch_size": 24, "embedding_dim": 8, "dropout": 0.3,
                            "weight_decay": 1e-4, "attention_dim": 8, "l2_attention": 0.0}  # fmt: skip
    trained = manifest_of(train_tiny(tmp_path, *TINY, "--name", "plain"))
    assert trained.metrics is not None and given.value == trained.metrics.validation["auc"]

    # the published model is the best trial's: its settings, its validation score, its epochs
    best = tuning.trials[tuning.best_trial]
    complete = [t.value for t in tuning.trials if t.state == "complete" and t.value is not None]
    assert best.state == "complete" and best.value == max(complete)
    config, network = manifest.training_config, manifest.network
    assert config is not None and network is not None and manifest.metrics is not None
    assert (config.lr, config.batch_size, config.weight_decay, config.l2_attention) == (
        best.params["lr"], best.params["batch_size"], best.params["weight_decay"],
        best.params["l2_attention"],
    )  # fmt: skip
    assert (network.embedding_dim, network.attention_dim, network.dropout) == (
        best.params["embedding_dim"], best.params["attention_dim"], best.params["dropout"],
    )  # fmt: skip
    assert manifest.metrics.validation["auc"] == best.value
    assert manifest.history is not None and len(manifest.history) == best.epochs

    assert "tuning: 4 trials (" in out and f"bundle: {path}" in out
    assert f"test: auc {manifest.metrics.test['auc']:.4f}" in out
    if best.number == 0:
        assert "no trial beat the settings as given" in out
    else:
        assert (
            f"best trial {best.number}: valid auc {best.value:.4f} against {given.value:.4f}" in out
        )


def test_pruned_trials_are_recorded_and_the_settings_as_given_always_run_in_full(tmp_path):
    options = TrainOptions(
        data=DataOptions(max_rows=400), out=tmp_path, name="pruned", epochs=2, embedding_dim=8,
        attention_dim=8, threads=1,
    )  # fmt: skip
    # a pruner that stops every trial at its first report: no AUC reaches 1
    path = tune(options, trials=3, pruner=optuna.pruners.ThresholdPruner(lower=1.0))
    tuning = tuning_of(manifest_of(path))
    assert [(t.number, t.state, t.epochs) for t in tuning.trials] == [
        (0, "complete", 2), (1, "pruned", 1), (2, "pruned", 1),
    ]  # fmt: skip
    assert tuning.best_trial == tuning.defaults_trial == 0
    assert all(t.value is not None for t in tuning.trials)  # a pruned trial's best epoch so far
    config = manifest_of(path).training_config
    assert config is not None and config.lr == options.lr and config.epochs == 2


def test_a_diverged_trial_fails_and_with_no_complete_trial_nothing_is_published(tmp_path, capsys):
    # a rate of 1e30 overflows the embeddings at once: the RMSE is not a number
    with pytest.raises(SystemExit, match="no trial completed, so there is nothing to publish"):
        main(["tune", "--task", "rating", *TINY, "--max-rows", "300", "--lr", "1e30",
              "--trials", "1", "--out", str(tmp_path)])  # fmt: skip
    assert "trial 0 failed after 1 epochs" in capsys.readouterr().out
    assert not (tmp_path / "synthetic-afm").exists()


def test_tune_reads_your_own_file_and_splits_it_as_train_does(tmp_path):
    csv, _, _ = write_same_rows(tmp_path, rows=300)
    main(["tune", "--data", str(csv), "--fields", "user,item,weather", "--model", "fm",
          "--split", "0.6,0.2,0.2", "--epochs", "2", "--trials", "2", "--threads", "1",
          "--out", str(tmp_path)])  # fmt: skip
    manifest = manifest_of(tmp_path / "rows-fm" / "1")
    assert manifest.model == "fm"
    assert manifest.data is not None and manifest.data.split is not None
    assert manifest.data.split.fractions == (0.6, 0.2, 0.2)
    assert manifest.data.rows.train == 180
    trials = tuning_of(manifest).trials
    assert len(trials) == 2  # an FM has no attention network to size or regularise
    assert all(set(t.params) == {"lr", "batch_size", "embedding_dim", "dropout", "weight_decay"}
               for t in trials)  # fmt: skip


def test_tune_options_are_train_s_that_train_from_scratch(capsys):
    options = train_options(parse_args(["tune", "--lr", "0.01", "--trials", "5"]))
    assert options == TrainOptions(lr=0.01)
    for wrong in (["--trials", "0"], ["--timeout", "0"], ["--init-from", "models/x/1"],
                  ["--quick"]):  # fmt: skip
        with pytest.raises(SystemExit):
            parse_args(["tune", *wrong])
    assert "unrecognized arguments: --init-from" in capsys.readouterr().err


def trial(number: int, state: str = "complete", value: float | None = 0.7) -> dict[str, Any]:
    return {"number": number, "state": state, "params": {"lr": 0.001}, "value": value,
            "epochs": 2, "seconds": 1.0}  # fmt: skip


def search(trials: list[dict[str, Any]], best: int, defaults: int = 0) -> dict[str, Any]:
    return {"metric": "auc", "direction": "maximize", "sampler": "TPESampler(seed=0)",
            "pruner": "MedianPruner", "seconds": 3.0, "trials": trials,
            "defaults_trial": defaults, "best_trial": best}  # fmt: skip


@pytest.mark.parametrize(
    ("history", "problem"),
    [
        (search([trial(0), trial(1, "pruned", 0.9)], best=1), "best_trial 1 did not complete"),
        (search([trial(0, value=0.7), trial(1, value=0.8)], best=0), "not the best complete"),
        (search([trial(0)], best=3), "best_trial 3 is not among the trials"),
        (search([trial(0), trial(0)], best=0), "trial numbers repeat"),
        (search([trial(0), trial(1, "failed", 0.5)], best=0), "a value goes with a complete"),
        (search([trial(0), trial(1, "complete", None)], best=0), "a value goes with a complete"),
    ],
)
def test_a_tuning_history_that_contradicts_itself_is_refused(history, problem):
    with pytest.raises(ValidationError, match=problem):
        Tuning.model_validate(history)


def test_a_consistent_tuning_history_is_read_back_as_written():
    history = search([trial(0, value=0.7), trial(1, "pruned", 0.72), trial(2, "failed", None),
                      trial(3, value=0.71)], best=3)  # fmt: skip
    read = Tuning.model_validate(history)
    written = read.model_dump(exclude_none=True)  # as bundle.json is written: no null keys
    assert "value" not in written["trials"][2]
    assert Tuning.model_validate(written) == read
    assert [t.value for t in read.trials] == [0.7, 0.72, None, 0.71]


def test_the_summary_weighs_the_best_trial_against_the_settings_as_given():
    beaten = Tuning.model_validate(search([trial(0, value=0.7), trial(1, value=0.75)], best=1))
    assert "best trial 1: valid auc 0.7500 against 0.7000 with the settings as given (+0.0500)" in (
        tuning_summary(beaten)
    )
    kept = Tuning.model_validate(search([trial(0, value=0.7), trial(1, "pruned", 0.6)], best=0))
    assert "no trial beat the settings as given (trial 0, valid auc 0.7000)" in tuning_summary(kept)
    assert "2 trials (1 complete, 1 pruned)" in tuning_summary(kept)
    diverged = Tuning.model_validate(search([trial(0, "failed", None), trial(1)], best=1))
    assert "the settings as given (trial 0) failed" in tuning_summary(diverged)
