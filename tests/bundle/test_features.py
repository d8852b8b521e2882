import json

import numpy as np
import pytest
from pydantic import TypeAdapter

from training.bundle.features import MISSING, FeatureEncoder, FeatureSpec, FieldSpec, FittedField

SPEC = FeatureSpec((FieldSpec("user"), FieldSpec("city", min_count=2), FieldSpec("age", "numeric")))
TRAIN = {
    "user": np.array(["b", "a", "b", "c", "a", "b"]),
    "city": np.array(["x", "x", "y", "x", "z", "z"]),
    "age": np.array([20.0, 30.0, 40.0, np.nan, 30.0, 30.0]),
}


def test_vocabulary_is_ordered_by_frequency_then_first_appearance():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    user = encoder.categorical("user")
    assert user.vocabulary == {"b": 1, "a": 2, "c": 3}  # b x3, then a x2, then c; slot 0 is OOV
    assert user.oov_index == 0


def test_fields_own_contiguous_blocks_of_the_embedding_table():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    user, city, age = encoder.fields
    assert (user.offset, city.offset, age.offset) == (0, 4, 7)
    assert encoder.num_features == 8


def test_rare_values_fall_below_min_count_into_oov():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    city = encoder.categorical("city")
    assert set(city.vocabulary) == {"x", "z"}  # y was seen once, min_count is 2
    encoded = encoder.encode({"user": ["a"], "city": ["y"], "age": [30.0]})
    assert encoded.index[0, 1] == city.oov_index


def test_unseen_values_map_to_oov_and_are_counted_missing_ones_are_not():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    encoded = encoder.encode(
        {"user": ["zz", MISSING, "a"], "city": ["x", "x", "q"], "age": [1.0, 2.0, 3.0]}
    )
    assert encoded.index[:, 0].tolist() == [0, 0, 2]
    assert encoded.index[2, 1] == encoder.categorical("city").oov_index
    assert encoded.unseen == {"user": 1, "city": 1}


def test_numeric_field_is_standardised_and_missing_numbers_take_the_mean():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    age = encoder.numeric("age")
    finite = TRAIN["age"][np.isfinite(TRAIN["age"])]
    assert age.mean == pytest.approx(finite.mean())
    assert age.std == pytest.approx(finite.std())
    encoded = encoder.encode({"user": ["a", "a"], "city": ["x", "x"], "age": [40.0, np.nan]})
    assert encoded.index[:, 2].tolist() == [age.offset, age.offset]
    assert encoded.value[0, 2] == pytest.approx((40.0 - age.mean) / age.std)
    assert encoded.value[1, 2] == 0.0
    assert encoded.value[:, :2].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_fitted_fields_round_trip_through_json():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    written = json.loads(json.dumps([f.model_dump() for f in encoder.fields]))
    again = FeatureEncoder([TypeAdapter(FittedField).validate_python(f) for f in written])
    assert again.fields == encoder.fields
    columns = {"user": ["c", "b", "?"], "city": ["z", "y", "x"], "age": [25.0, 35.0, np.nan]}
    a, b = encoder.encode(columns), again.encode(columns)
    assert np.array_equal(a.index, b.index) and np.array_equal(a.value, b.value)


def test_feature_spec_parses_kinds_and_min_counts():
    spec = FeatureSpec.parse("user, item:categorical:5, age:numeric", label="clicked")
    assert spec.fields == (
        FieldSpec("user"),
        FieldSpec("item", "categorical", 5),
        FieldSpec("age", "numeric"),
    )
    assert spec.label == "clicked"
    with pytest.raises(ValueError, match="unknown kind"):
        FeatureSpec.parse("user:text")


def test_long_and_short_columns_encode_alike():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    rng = np.random.default_rng(0)
    columns = {
        "user": rng.choice(["a", "b", "c", "new", MISSING], 10_000),
        "city": rng.choice(["x", "y", "z", "w"], 10_000),
        "age": rng.normal(30, 5, 10_000),
    }
    whole = encoder.encode(columns)  # one long column: distinct values mapped once
    parts = [
        encoder.encode({k: v[i : i + 100] for k, v in columns.items()})
        for i in range(0, 10_000, 100)
    ]
    assert np.array_equal(whole.index, np.concatenate([p.index for p in parts]))
    for name in ("user", "city"):
        assert whole.unseen[name] == sum(p.unseen[name] for p in parts)
    assert whole.unseen["user"] == np.count_nonzero(columns["user"] == "new")
