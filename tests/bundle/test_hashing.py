import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from training.bundle.features import (
    MISSING,
    SMALL_COLUMN,
    FeatureEncoder,
    FeatureSpec,
    FittedField,
    HashedField,
    hash_slot,
    spec_item,
)
from training.data.checks import DataError, parse_fields

VECTORS = json.loads((Path(__file__).parents[1] / "hash_vectors.json").read_text())["vectors"]
SPEC = FeatureSpec.parse("user:hash:1000003,item,age:numeric")
TRAIN = {
    "user": np.array(["u1", "u2", "u1", "u3", "u1", "u2"]),
    "item": np.array(["a", "b", "a", "a", "b", "c"]),
    "age": np.array([20.0, 30.0, 40.0, 50.0, 30.0, 30.0]),
}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['value']!r}%{v['buckets']}")
def test_hash_slot_matches_the_shared_vectors(vector):
    assert hash_slot(vector["value"], vector["buckets"]) == vector["index"]


def test_encoder_places_each_vector_in_the_fields_block():
    offset = 7
    by_buckets: dict[int, list[dict[str, Any]]] = {}
    for vector in VECTORS:
        by_buckets.setdefault(vector["buckets"], []).append(vector)
    for buckets, vectors in by_buckets.items():
        field = HashedField(name="user", kind="hash", offset=offset, buckets=buckets)
        index = field.encode_values([v["value"] for v in vectors])
        assert index.tolist() == [offset + v["index"] for v in vectors]


def test_a_long_column_hashes_as_its_values_do_one_by_one():
    field = HashedField(name="user", kind="hash", offset=3, buckets=97)
    rng = np.random.default_rng(0)
    column = np.array([f"id-{n}" for n in rng.integers(0, 500, SMALL_COLUMN * 2)])
    expected = [3 + hash_slot(v, 97) for v in column.tolist()]
    assert field.encode_values(column).tolist() == expected


def test_an_integer_id_and_its_decimal_text_share_a_slot():
    field = HashedField(name="user", kind="hash", offset=0, buckets=1_000_003)
    index = field.encode_values([42, "42", np.int64(42), -7, "-7", 2**70, str(2**70)])
    assert index[0] == index[1] == index[2]
    assert index[3] == index[4]
    assert index[5] == index[6]
    assert len(set(index.tolist())) == 3


def test_fitted_hashed_field_owns_its_buckets_and_keeps_frequent_values_as_examples():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    user, item, _ = encoder.fields
    assert isinstance(user, HashedField)
    assert (user.offset, user.size, item.offset) == (0, 1_000_003, 1_000_003)
    assert encoder.num_features == 1_000_003 + 4 + 1
    assert user.examples() == ["u1", "u2", "u3"]  # by frequency


def test_a_hashed_field_never_produces_an_unseen_value():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    never_seen = ["stranger", MISSING, "u1"]
    encoded = encoder.encode({"user": never_seen, "item": ["a", "zz", "b"], "age": [1.0] * 3})
    assert encoded.index[:, 0].tolist() == [hash_slot(v, 1_000_003) for v in never_seen]
    assert "user" not in encoded.unseen and "user" not in encoded.clipped
    assert encoded.unseen == {"item": 1}
    assert encoded.value[:, 0].tolist() == [1.0, 1.0, 1.0]


def test_hashed_field_round_trips_through_the_manifest_representation():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    adapter = TypeAdapter(list[FittedField])
    text = adapter.dump_json(encoder.fields)
    assert json.loads(text)[0] == {
        "name": "user",
        "kind": "hash",
        "offset": 0,
        "buckets": 1_000_003,
        "hash": "xxh64",
        "common_values": ["u1", "u2", "u3"],
    }
    assert adapter.validate_json(text) == encoder.fields


@pytest.mark.parametrize(
    "changed", [{"buckets": 0}, {"hash": "md5"}, {"kind": "categorical"}, {"offset": -1}]
)
def test_manifest_refuses_a_malformed_hashed_field(changed):
    valid = {"name": "user", "kind": "hash", "offset": 0, "buckets": 8}
    TypeAdapter(FittedField).validate_python(valid)
    with pytest.raises(ValidationError):
        TypeAdapter(FittedField).validate_python({**valid, **changed})


def test_fields_option_declares_hashed_fields_and_refuses_them_without_buckets():
    spec = parse_fields("user:hash:1000000,item,price:numeric", "label")
    user = spec.fields[0]
    assert (user.name, user.kind, user.buckets) == ("user", "hash", 1_000_000)
    assert not user.numeric
    for bad in ("user:hash", "user:hash:0", "user:hash:many", "user:hash:4:2"):
        with pytest.raises(DataError, match="user"):
            parse_fields(bad, "label")
    with pytest.raises(ValueError, match="buckets"):
        FeatureSpec.parse("user:hash")


def test_a_bundles_hashed_field_reads_back_as_its_fields_item():
    encoder = FeatureEncoder.fit(SPEC, TRAIN)
    items = ",".join(spec_item(f) for f in encoder.fields)
    assert items == "user:hash:1000003,item:categorical,age:numeric"
    assert parse_fields(items, "label").fields[0].buckets == 1_000_003
