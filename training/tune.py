"""`python -m training tune`: search train's settings with Optuna and publish the best model.

The study samples with TPE, seeded by --seed, and prunes on the validation metric after each epoch
(median rule). Trial 0 trains with the settings as given, exactly as `train` would, and runs in
full: it is the bar every other trial is measured against, so the published model is never worse
on validation than what `train` alone gives. Each trial trains on the training split and is
judged on the validation split; the test split scores only the published model. That model is
published the way `train` publishes, with the study in bundle.json's `tuning`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import optuna
import torch

from training import commands, metrics
from training.bundle.features import FeatureEncoder
from training.bundle.manifest import Tuning, TuningTrial
from training.commands import TrainOptions
from training.data import Splits
from training.model import AFM
from training.trainer import History, Tensors, TrainConfig, fit

# The search space, around conventional ranges; the value given on the command line is always
# among the choices, so trial 0 can train with it. L2 strengths are a grid with 0 in it: a log
# scale cannot hold "off".
LEARNING_RATES = (1e-4, 3e-2)  # log scale
SIZES = (8, 16, 32, 64, 128)  # embedding_dim k and attention_dim t
DROPOUT = (0.0, 0.6)
L2_ATTENTION = (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # AFM only: lambda on ||W||^2
WEIGHT_DECAY = (0.0, 1e-6, 1e-5, 1e-4, 3e-4)
# batch sizes: powers of two from a quarter to four times the given (or automatic) one, each
# with at least this many steps per epoch
MIN_STEPS_PER_EPOCH = 4
SEARCHED = (
    "lr",
    "batch_size",
    "embedding_dim",
    "attention_dim",
    "dropout",
    "l2_attention",
    "weight_decay",
)


def batch_sizes(given: int, train_rows: int) -> list[int]:
    """The batch sizes searched: powers of two in [given / 4, given * 4] that leave
    MIN_STEPS_PER_EPOCH steps per epoch, and the given one."""
    powers = [2**p for p in range(4, 17)]
    fitting = [
        b for b in powers if given / 4 <= b <= given * 4 and b * MIN_STEPS_PER_EPOCH <= train_rows
    ]
    return sorted({*fitting, given})


def with_given(choices: tuple[Any, ...], given: Any) -> list[Any]:
    return sorted({*choices, given})


def suggest(trial: optuna.Trial, given: TrainOptions, batch_choices: list[int]) -> TrainOptions:
    """The trial's settings: `given` with the searched options sampled."""
    low, high = min(LEARNING_RATES[0], given.lr), max(LEARNING_RATES[1], given.lr)
    settings: dict[str, Any] = {
        "lr": trial.suggest_float("lr", low, high, log=True),
        "batch_size": trial.suggest_categorical("batch_size", batch_choices),
        "embedding_dim": trial.suggest_categorical(
            "embedding_dim", with_given(SIZES, given.embedding_dim)
        ),
        "dropout": trial.suggest_float("dropout", DROPOUT[0], max(DROPOUT[1], given.dropout)),
    }
    if not given.sparse_embeddings:  # their optimizers take no weight decay
        settings["weight_decay"] = trial.suggest_categorical(
            "weight_decay", with_given(WEIGHT_DECAY, given.resolved_weight_decay())
        )
    if given.model == "afm":
        settings["attention_dim"] = trial.suggest_categorical(
            "attention_dim", with_given(SIZES, given.attention_dim)
        )
        settings["l2_attention"] = trial.suggest_categorical(
            "l2_attention", with_given(L2_ATTENTION, given.l2_attention)
        )
    return replace(given, **settings)


def given_params(given: TrainOptions, batch_size: int) -> dict[str, Any]:
    """Trial 0's settings: the options as given, with the batch size `train` would use."""
    values = {name: getattr(given, name) for name in SEARCHED} | {"batch_size": batch_size}
    values["weight_decay"] = given.resolved_weight_decay()
    if given.model != "afm":
        del values["attention_dim"], values["l2_attention"]
    if given.sparse_embeddings:
        del values["weight_decay"]
    return values


def flags(params: dict[str, Any]) -> str:
    """Settings as `train` options, to train them again."""
    named = [name for name in SEARCHED if name in params]
    return " ".join(f"--{name.replace('_', '-')} {params[name]:g}" for name in named)


@dataclass
class Kept:
    """The best complete trial so far, with its trained model."""

    number: int
    value: float
    model: AFM
    options: TrainOptions
    config: TrainConfig
    history: History


@dataclass
class Search:
    """What one `tune` run shares between its trials: the encoded data and the best so far."""

    given: TrainOptions
    encoder: FeatureEncoder
    splits: Splits
    sets: tuple[Tensors, Tensors, Tensors]
    batch_choices: list[int]
    metric: str
    higher_is_better: bool
    runs: dict[int, tuple[int, float]] = field(default_factory=dict)  # number: epochs, seconds
    best: Kept | None = None

    def objective(self, trial: optuna.Trial) -> float:
        """Train one trial's settings; its best validation metric, or TrialPruned."""
        options = suggest(trial, self.given, self.batch_choices)
        assert options.batch_size is not None  # suggest always sets one
        started = time.perf_counter()
        # seeded before the model is built, as `train` does: trial 0 is `train`'s own model
        torch.manual_seed(self.given.data.seed)
        model = commands.new_model(options, self.encoder, self.splits)
        config = commands.train_config(
            options, self.given.data, options.batch_size, self.splits.label_range
        )
        epochs_run = 0

        def report(epoch: int, scores: dict[str, float]) -> bool:
            nonlocal epochs_run
            epochs_run = epoch
            if math.isnan(scores[self.metric]):  # the search records it as failed, and goes on
                raise ValueError(f"valid {self.metric} is not a number: the run diverged")
            trial.report(scores[self.metric], epoch)
            # trial 0 is the bar: it always runs to the end, as `train` would
            return trial.number > 0 and trial.should_prune()

        train, validation, _ = self.sets
        try:
            history = fit(
                model, train, validation, config, f"trial {trial.number}", on_epoch=report
            )
        finally:
            self.runs[trial.number] = (epochs_run, time.perf_counter() - started)
        value = history.best[self.metric]
        if history.stopped_by_hook:
            raise optuna.TrialPruned(f"valid {self.metric} {value:.4f} at epoch {epochs_run}")
        if self.best is None or self.better(value, self.best.value):
            self.best = Kept(trial.number, value, model, options, config, history)
        return value

    def better(self, value: float, than: float) -> bool:
        return value > than if self.higher_is_better else value < than

    def record(
        self, study: optuna.Study, described: tuple[str, str], seconds: float,
        trials: int | None, timeout: float | None,
    ) -> Tuning:  # fmt: skip
        """The study as bundle.json's `tuning` holds it; `described`: its sampler and pruner."""
        assert self.best is not None
        states: dict[optuna.trial.TrialState, Literal["complete", "pruned", "failed"]] = {
            optuna.trial.TrialState.COMPLETE: "complete",
            optuna.trial.TrialState.PRUNED: "pruned",
            optuna.trial.TrialState.FAIL: "failed",
        }
        done = [t for t in study.trials if t.state in states]
        return Tuning(
            metric=self.metric,
            direction="maximize" if self.higher_is_better else "minimize",
            sampler=described[0],
            pruner=described[1],
            budget_trials=trials,
            budget_seconds=timeout,
            seconds=seconds,
            trials=[
                TuningTrial(
                    number=t.number,
                    state=states[t.state],
                    params=t.params,
                    value=None if t.state == optuna.trial.TrialState.FAIL else self.value(t),
                    epochs=self.runs.get(t.number, (0, 0.0))[0],
                    seconds=self.runs.get(t.number, (0, 0.0))[1],
                )
                for t in done
            ],
            defaults_trial=0,
            best_trial=self.best.number,
        )

    def value(self, trial: optuna.trial.FrozenTrial) -> float:
        """A complete trial's value; a pruned one's best validation metric before it stopped."""
        if trial.value is not None and trial.state == optuna.trial.TrialState.COMPLETE:
            return float(trial.value)
        seen = list(trial.intermediate_values.values())
        return max(seen) if self.higher_is_better else min(seen)


def tune(
    options: TrainOptions,
    trials: int | None = 20,
    timeout: float | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> Path:
    """Search train's settings for `trials` trials or `timeout` seconds, whichever ends first,
    and publish the best complete trial's model. `pruner`: the median rule unless given."""
    data = options.data
    for option in ("init_from", "warm_start"):
        if getattr(options, option) is not None:
            sys.exit(f"tune trains from scratch: not with --{option.replace('_', '-')}")
    if options.batch_norm and options.model != "fm":
        sys.exit("--batch-norm is for --model fm (AFM has none)")
    commands.require_device(options.device)
    if options.threads:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    splits = commands.load_splits(data)
    encoder = FeatureEncoder.fit(splits.spec, splits.train.columns)
    sets = commands.encode_splits(encoder, splits)
    train_rows = len(sets[0])
    given_batch = options.batch_size or commands.auto_batch_size(train_rows)
    metric, higher_is_better = metrics.main_metric(data.task)
    search = Search(
        options, encoder, splits, sets, batch_sizes(given_batch, train_rows), metric,
        higher_is_better,
    )  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial prints its own lines
    # at least half the budget is sampled by TPE's model rather than at random
    startup = max(2, min(10, (trials or 20) // 2))
    sampler = optuna.samplers.TPESampler(seed=data.seed, n_startup_trials=startup)
    sampler_text = f"TPESampler(seed={data.seed}, n_startup_trials={startup})"
    if pruner is None:
        # no pruning before two trials are complete, nor before a third of the epochs (and at
        # least two) have run: a first epoch says little about where a trial ends
        warmup = max(2, math.ceil(options.epochs / 3))
        pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=warmup)
        pruner_text = f"MedianPruner(n_startup_trials=2, n_warmup_steps={warmup})"
    else:
        pruner_text = type(pruner).__name__
    study = optuna.create_study(
        direction="maximize" if higher_is_better else "minimize", sampler=sampler, pruner=pruner
    )
    given = given_params(options, given_batch)
    study.enqueue_trial(given)
    print(
        f"tune: {trials or 'unlimited'} trials"
        + (f" or {timeout:g}s" if timeout else "")
        + f" on valid {metric}; trial 0 is the settings as given: {flags(given)}",
        flush=True,
    )

    def announce(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        epochs, seconds = search.runs.get(trial.number, (0, 0.0))
        if trial.state == optuna.trial.TrialState.FAIL:
            outcome = "failed"
        else:
            outcome = f"{trial.state.name.lower()}, valid {metric} {search.value(trial):.4f}"
        print(
            f"trial {trial.number} {outcome} after {epochs} epochs ({seconds:.0f}s):"
            f" {flags(trial.params)}",
            flush=True,
        )

    study.optimize(
        search.objective,
        n_trials=trials,
        timeout=timeout,
        # a diverged trial's scores are not numbers (sklearn raises ValueError): the search goes on
        catch=(ValueError,),
        callbacks=[announce],
    )
    seconds = time.perf_counter() - started
    if search.best is None:
        sys.exit("tune: no trial completed, so there is nothing to publish")
    tuning = search.record(study, (sampler_text, pruner_text), seconds, trials, timeout)
    best = search.best
    name = options.name or commands.default_name(data, splits, options.model)
    path, test_metrics = commands.publish_trained(
        best.model, encoder, splits, sets, best.config, best.history, best.options, name,
        more={"tuning": tuning.model_dump()},
    )  # fmt: skip
    print(tuning_summary(tuning), flush=True)
    print(
        commands.summary(
            best.history, best.config.epochs, best.config.patience, metric, test_metrics, path,
            started_from=False,
        ),
        flush=True,
    )  # fmt: skip
    return path


def tuning_summary(tuning: Tuning) -> str:
    """The search in a few lines: how many trials ended how, the best against the given."""
    counts = {
        state: sum(t.state == state for t in tuning.trials)
        for state in ("complete", "pruned", "failed")
    }
    ended = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    trials = {t.number: t for t in tuning.trials}
    best, given = trials[tuning.best_trial], trials[tuning.defaults_trial]
    assert best.value is not None  # the best trial is a complete one
    metric = tuning.metric
    if best.number == given.number:
        verdict = (
            f"no trial beat the settings as given (trial {given.number},"
            f" valid {metric} {best.value:.4f}): they are published"
        )
    elif given.value is None:
        verdict = (
            f"best trial {best.number}: valid {metric} {best.value:.4f}; the settings as given"
            f" (trial {given.number}) failed"
        )
    else:
        change = best.value - given.value
        verdict = (
            f"best trial {best.number}: valid {metric} {best.value:.4f} against"
            f" {given.value:.4f} with the settings as given ({change:+.4f})"
        )
    return (
        f"tuning: {len(tuning.trials)} trial{'s' if len(tuning.trials) > 1 else ''} ({ended})"
        f" in {tuning.seconds:.0f}s\n"
        f"  {verdict}\n  its settings: {flags(best.params)}"
    )
