"""The best epoch's weights that `fit` keeps: a copy only while a later epoch may still move the
model away from them, and never two copies at once (each is the size of the tables)."""

from __future__ import annotations

import copy
import weakref
from typing import Any

import pytest
import torch

from training.model import AFM, AFMConfig
from training.trainer import Tensors, TrainConfig, fit

DEEPCOPY = copy.deepcopy  # the real one, as the watch replaces it in the copy module


def learnable(rows: int, seed: int) -> Tensors:
    """Ratings (+-1) that follow the first field: validation RMSE falls epoch after epoch."""
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, 20, (rows, 2), generator=g) + torch.tensor([0, 20])
    return Tensors(index, torch.ones(rows, 2), (index[:, 0] < 10).float() * 2 - 1)


class CopyWatch:
    """copy.deepcopy as fit calls it, recording each copy and whether the last one was alive."""

    def __init__(self) -> None:
        self.copies = 0
        self.last: weakref.ref[torch.Tensor] | None = None
        self.overlapped = False

    def __call__(self, state: Any, memo: dict[int, Any] | None = None) -> Any:
        if memo is not None:  # a copy within the copy (a tensor's storage): not fit's call
            return DEEPCOPY(state, memo)
        copied = DEEPCOPY(state)
        if self.last is not None and self.last() is not None:
            self.overlapped = True
        self.copies += 1
        self.last = weakref.ref(next(iter(copied.values())))
        return copied


def model() -> AFM:
    torch.manual_seed(0)
    return AFM(AFMConfig(num_features=40, num_fields=2, embedding_dim=4, attention=False))


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> CopyWatch:
    watch = CopyWatch()
    monkeypatch.setattr(copy, "deepcopy", watch)  # the module fit calls it through
    return watch


def test_one_epoch_keeps_no_copy_of_the_weights(watch: CopyWatch) -> None:
    history = fit(
        model(), learnable(512, 0), learnable(256, 1), TrainConfig(task="rating", epochs=1, lr=0.05)
    )
    assert history.best_epoch == 1 and watch.copies == 0


def test_improving_epochs_copy_all_but_the_last_and_drop_each_copy_first(
    watch: CopyWatch,
) -> None:
    history = fit(
        model(), learnable(512, 0), learnable(256, 1), TrainConfig(task="rating", epochs=4, lr=0.05)
    )
    improved = [h["epoch"] for h in history.epochs if h["epoch"] <= history.best_epoch]
    assert history.best_epoch == 4 and len(improved) == 4  # every epoch beat the one before
    assert watch.copies == 3  # epochs 1 to 3; the last one's weights are the model's own
    assert not watch.overlapped


def test_the_best_epochs_weights_are_returned_whichever_epoch_it_was(watch: CopyWatch) -> None:
    """Labels of noise at a large rate: validation wanders, and the weights fit returns are those
    the model had after its best epoch."""
    net = model()
    g = torch.Generator().manual_seed(2)
    index = torch.randint(0, 20, (512, 2), generator=g) + torch.tensor([0, 20])
    noise = Tensors(index, torch.ones(512, 2), torch.randint(0, 2, (512,), generator=g) * 2.0 - 1)
    after: dict[int, dict[str, torch.Tensor]] = {}

    def remember(epoch: int, scores: dict[str, float]) -> bool:
        after[epoch] = {k: v.clone() for k, v in net.state_dict().items()}
        return False

    config = TrainConfig(task="rating", epochs=6, lr=0.5, batch_size=64, patience=6)
    history = fit(net, noise, learnable(256, 1), config, on_epoch=remember)
    assert len(after) == 6 and history.best_epoch < 6  # wandered: a copy was needed
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, after[history.best_epoch][name], msg=name)
    assert watch.copies >= 1 and not watch.overlapped


def test_a_started_model_is_copied_once_as_a_candidate(watch: CopyWatch) -> None:
    fit(model(), learnable(512, 0), learnable(256, 1), TrainConfig(task="rating", epochs=1, lr=0.05),
        start_is_candidate=True)  # fmt: skip
    assert watch.copies == 1  # the start, before its first epoch moves it
