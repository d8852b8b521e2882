"""Numbers as CTR practice treats them: clipped standardisation, log1p and quantile buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from training.bundle.features import (
    STANDARDISED_LIMIT,
    AnyField,
    BucketField,
    FeatureEncoder,
    FeatureSpec,
    FieldSpec,
    FittedField,
    NumericField,
)
from training.data.checks import DataError, parse_fields

SPEC = FeatureSpec(
    (
        FieldSpec("user"),
        FieldSpec("age", "numeric"),
        FieldSpec("price", "log"),
        FieldSpec("hour", "bucket", buckets=4),
    )
)
TRAIN = {
    "user": np.array(["a", "b", "a", "c", "b", "a", "c", "a"]),
    "age": np.array([20.0, 30.0, 40.0, np.nan, 50.0, 30.0, 25.0, 35.0]),
    "price": np.array([0.0, 1.0, 3.0, 9.0, np.nan, 0.0, 99.0, 1.0]),
    "hour": np.array([0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0]),
}
EXTREMES = [1e308, -1e308, 1e39, -1e39, 1e-300, math.inf, -math.inf]


def row(**values: object) -> dict[str, list[object]]:
    base: dict[str, object] = {"user": "a", "age": 30.0, "price": 1.0, "hour": 6.0}
    return {k: [v] for k, v in {**base, **values}.items()}


def columns(name: str, values: list[float]) -> dict[str, list[object]]:
    rows = [row(**{name: v}) for v in values]
    return {k: [r[k][0] for r in rows] for k in rows[0]}


@pytest.fixture(scope="module")
def encoder() -> FeatureEncoder:
    return FeatureEncoder.fit(SPEC, TRAIN)


def test_a_numeric_field_records_its_training_range(encoder: FeatureEncoder) -> None:
    age = encoder.numeric("age")
    assert (age.transform, age.min, age.max) == ("none", 20.0, 50.0)
    finite = TRAIN["age"][np.isfinite(TRAIN["age"])]
    assert age.mean == pytest.approx(finite.mean()) and age.std == pytest.approx(finite.std())


def test_numbers_outside_the_training_range_are_clipped_to_it_and_counted(
    encoder: FeatureEncoder,
) -> None:
    age = encoder.numeric("age")
    encoded = encoder.encode(columns("age", [10.0, 20.0, 35.0, 50.0, 60.0, 1e308, -1e39]))
    x = encoded.value[:, 1]
    low, high = (20.0 - age.mean) / age.std, (50.0 - age.mean) / age.std
    assert x.tolist() == pytest.approx(
        [low, low, (35.0 - age.mean) / age.std, high, high, high, low]
    )
    assert encoded.clipped["age"] == 4  # 10, 60, 1e308 and -1e39; the ends themselves are in range
    assert encoded.index[:, 1].tolist() == [age.offset] * 7


@pytest.mark.parametrize(("name", "clipped"), [("age", 9), ("price", 6), ("hour", 6)])
def test_no_number_encodes_to_a_value_that_is_not_finite(
    encoder: FeatureEncoder, name: str, clipped: int
) -> None:
    encoded = encoder.encode(columns(name, [*EXTREMES, math.nan, 0.0, -0.0]))
    assert np.isfinite(encoded.value).all() and encoded.value.dtype == np.float32
    # the extremes but 1e-300 lie outside every range; age's [20, 50] holds neither 1e-300 nor 0
    assert encoded.clipped[name] == clipped


def test_a_missing_number_enters_as_the_mean_and_is_not_counted_as_clipped(
    encoder: FeatureEncoder,
) -> None:
    encoded = encoder.encode(columns("age", [math.nan]) | {"price": [math.nan]})
    assert encoded.value[0, 1] == 0.0 and encoded.value[0, 2] == 0.0
    assert encoded.clipped == {"age": 0, "price": 0, "hour": 0}


def test_a_log_field_takes_log1p_and_clips_values_below_zero_to_zero(
    encoder: FeatureEncoder,
) -> None:
    price = encoder.numeric("price")
    logs = np.log1p([0.0, 1.0, 3.0, 9.0, 0.0, 99.0, 1.0])
    assert price.transform == "log1p"
    assert price.mean == pytest.approx(logs.mean()) and price.std == pytest.approx(logs.std())
    assert price.min == 0.0 and price.max is not None
    assert price.max == pytest.approx(math.log1p(99.0))
    encoded = encoder.encode(columns("price", [-5.0, 0.0, 3.0, 1e6]))
    x = encoded.value[:, 2]
    at_zero = (0.0 - price.mean) / price.std
    assert x.tolist() == pytest.approx(
        [
            at_zero,
            at_zero,
            (math.log1p(3.0) - price.mean) / price.std,
            (price.max - price.mean) / price.std,
        ],
        rel=1e-6,
    )
    assert encoded.clipped["price"] == 2  # -5 (below 0) and 1e6 (above the range), each once


def test_bucket_cuts_are_training_quantiles_and_each_bucket_owns_a_slot(
    encoder: FeatureEncoder,
) -> None:
    hour = encoder.bucket("hour")
    assert hour.cuts == pytest.approx(np.quantile(TRAIN["hour"], [0.25, 0.5, 0.75]).tolist())
    assert (hour.buckets, hour.size, hour.min, hour.max) == (4, 5, 0.0, 21.0)
    assert encoder.num_features == hour.offset + hour.size


def test_a_value_at_a_cut_point_opens_the_bucket_above_it(encoder: FeatureEncoder) -> None:
    hour = encoder.bucket("hour")
    c0, c1, c2 = hour.cuts
    values = [0.0, np.nextafter(c0, -math.inf), c0, c1, np.nextafter(c2, -math.inf), c2, 21.0]
    encoded = encoder.encode(columns("hour", values))
    buckets = (encoded.index[:, 3] - hour.offset).tolist()
    assert buckets == [1, 1, 2, 3, 3, 4, 4]  # slot 0 is missing values
    assert encoded.value[:, 3].tolist() == [1.0] * len(values)
    assert encoded.clipped["hour"] == 0


def test_a_missing_bucket_value_takes_the_missing_slot_and_far_values_the_end_buckets(
    encoder: FeatureEncoder,
) -> None:
    hour = encoder.bucket("hour")
    encoded = encoder.encode(columns("hour", [math.nan, -1e308, 1e308, -1.0, 22.0]))
    assert (encoded.index[:, 3] - hour.offset).tolist() == [0, 1, 4, 1, 4]
    assert encoded.clipped["hour"] == 4  # outside [0, 21]; the missing value is not clipped


def test_duplicate_cuts_collapse_into_fewer_buckets() -> None:
    spec = FeatureSpec((FieldSpec("n", "bucket", buckets=5),))
    values = np.array([0.0] * 60 + [1.0, 2.0, 3.0, 4.0] * 10)
    field = FeatureEncoder.fit(spec, {"n": values}).bucket("n")
    assert field.cuts == sorted(set(field.cuts))
    assert field.cuts[0] == 0.0 and field.buckets < 5 and field.size == len(field.cuts) + 2


def test_a_field_fitted_without_a_finite_value_still_encodes() -> None:
    spec = FeatureSpec((FieldSpec("a", "numeric"), FieldSpec("b", "log"), FieldSpec("c", "bucket")))
    empty = {name: np.array([math.nan, math.inf]) for name in ("a", "b", "c")}
    encoder = FeatureEncoder.fit(spec, empty)
    encoded = encoder.encode({name: [1e308, math.nan] for name in ("a", "b", "c")})
    assert np.isfinite(encoded.value).all()
    assert encoder.bucket("c").size == 2


def test_a_bundle_without_a_training_range_clips_to_a_bounded_standardised_value() -> None:
    old = NumericField(name="price", kind="numeric", offset=0, mean=1.0, std=2.0)
    x, clipped = old.encode_values([1e39, -1e308, 5.0])
    assert x.tolist() == [STANDARDISED_LIMIT, -STANDARDISED_LIMIT, 2.0]
    assert clipped == 2


def test_new_kinds_round_trip_through_json(encoder: FeatureEncoder) -> None:
    adapter: TypeAdapter[AnyField] = TypeAdapter(FittedField)
    again = FeatureEncoder([adapter.validate_json(adapter.dump_json(f)) for f in encoder.fields])
    assert again.fields == encoder.fields
    sample = columns("hour", [1.0, 7.0, 30.0]) | {"price": [-1.0, 2.0, 1e9]}
    a, b = encoder.encode(sample), again.encode(sample)
    assert np.array_equal(a.index, b.index) and np.array_equal(a.value, b.value)
    assert a.clipped == b.clipped


def test_a_numeric_field_from_an_older_bundle_reads_without_range_or_transform() -> None:
    adapter: TypeAdapter[AnyField] = TypeAdapter(FittedField)
    field = adapter.validate_python(
        {"name": "age", "kind": "numeric", "offset": 3, "mean": 30.0, "std": 5.0}
    )
    assert isinstance(field, NumericField)
    assert (field.transform, field.min, field.max) == ("none", None, None)


@pytest.mark.parametrize(
    ("field", "problem"),
    [
        ({"kind": "bucket", "cuts": [1.0, 3.0, 2.0]}, "cuts must be strictly increasing"),
        ({"kind": "bucket", "cuts": [1.0, 1.0]}, "cuts must be strictly increasing"),
        ({"kind": "bucket", "cuts": [1.0], "min": 2.0, "max": 0.0}, "min 2.0 is greater than max"),
        ({"kind": "numeric", "mean": 0, "std": 1, "min": 2.0, "max": 1.0}, "min 2.0 is greater"),
        ({"kind": "numeric", "mean": 0, "std": 1, "min": 2.0}, "min and max go together"),
        (
            {"kind": "numeric", "transform": "log1p", "mean": 0, "std": 1, "min": -1, "max": 1},
            "below 0",
        ),
        ({"kind": "numeric", "transform": "sqrt", "mean": 0, "std": 1}, "transform"),
    ],
)
def test_fields_that_contradict_themselves_are_refused(
    field: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        TypeAdapter(FittedField).validate_python({"name": "f", "offset": 0, **field})


def test_feature_spec_parses_log_and_bucket_kinds() -> None:
    spec = FeatureSpec.parse("user,price:log,hour:bucket:4,age:numeric,day:bucket")
    assert spec.fields[1:] == (
        FieldSpec("price", "log"),
        FieldSpec("hour", "bucket", buckets=4),
        FieldSpec("age", "numeric"),
        FieldSpec("day", "bucket", buckets=10),
    )
    assert [f.numeric for f in spec.fields] == [False, True, True, True, True]
    assert parse_fields("user,price:log,hour:bucket:4", "label").fields == spec.fields[:3]
    with pytest.raises(ValueError, match="at least 2 buckets"):
        FeatureSpec.parse("hour:bucket:1")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hour:bucket:1", "the number of buckets must be a whole number >= 2"),
        ("hour:bucket:x", "the number of buckets must be a whole number >= 2"),
        ("price:log:3", "name:log or name:bucket[:buckets]"),
        ("price:sqrt", "is not name[:categorical[:min_count]]"),
    ],
)
def test_fields_option_refuses_malformed_number_kinds(text: str, problem: str) -> None:
    with pytest.raises(DataError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_fields(f"user,{text}", "label")


def test_a_bucket_field_s_representatives_fall_one_in_each_bucket() -> None:
    field = BucketField(name="h", kind="bucket", offset=2, cuts=[1.0, 5.0], min=0.0, max=9.0)
    index, clipped = field.encode_values(field.representatives())
    assert index.tolist() == [3, 4, 5] and clipped == 0
