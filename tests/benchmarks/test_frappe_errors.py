"""The frappe error breakdown on a hand-made table."""

import numpy as np
import pytest

from benchmarks.frappe_errors import attention_spread, breakdown, pair_kinds
from training.readers import Table


def table(pairs: list[tuple[str, str]], labels: list[float]) -> Table:
    users, items = zip(*pairs, strict=True)
    return Table({"user": np.array(users), "item": np.array(items)}, np.array(labels, "float32"))


def test_pairs_are_used_negative_only_or_unseen_by_the_training_file():
    train = table([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b")], [1, -1, -1, -1])
    held_out = table([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u3", "a")], [1, 1, -1, 1])
    assert pair_kinds(train, held_out).tolist() == [
        "used",
        "negative only",
        "negative only",
        "unseen",
    ]


def test_squared_error_is_split_by_label_and_kind_on_clipped_scores():
    kinds = np.array(["used", "unseen", "unseen", "unseen"])
    label = np.array([1.0, 1.0, -1.0, -1.0])
    score = np.array([1.5, 0.0, -1.0, 0.0])  # errors 0 (clipped), 1, 0, 1
    groups = {(g.label, g.kind): g for g in breakdown(kinds, label, score)}
    assert set(groups) == {(1.0, "used"), (1.0, "unseen"), (-1.0, "unseen")}
    assert groups[(1.0, "used")].mse == 0.0
    assert groups[(1.0, "unseen")].share == pytest.approx(0.5)
    assert (groups[(-1.0, "unseen")].rows, groups[(-1.0, "unseen")].mse) == (2, 0.5)


def test_attention_spread_tells_flat_rows_from_peaked_ones():
    uniform = np.full((2, 4), 0.25)
    peaked = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    flat, spread = attention_spread(uniform), attention_spread(peaked)
    assert (flat.pairs, flat.row_std, flat.row_max, flat.rows_over_twice_uniform) == (4, 0, 0.25, 0)
    assert spread.row_max == pytest.approx((0.7 + 0.25) / 2)
    assert spread.row_std == pytest.approx(np.std([0.7, 0.1, 0.1, 0.1]) / 2)
    assert spread.rows_over_twice_uniform == 0.5  # the first row's 0.7 is above 2/4
