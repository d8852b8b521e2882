"""Hashed fields end to end: criteo-like shards generated, an AFM with hashed fields trained on them
with the real CLI (`train --data DIR`), exported, served by the real server, scored over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.dataset as ds
import pytest

from tests.service.conftest import Server, serving_a_copy
from training import bundle as bundles
from training.cli import parse_args, train_options
from training.commands import train
from training.data.criteo_like import write

VECTORS = json.loads((Path(__file__).parents[1] / "hash_vectors.json").read_text())["vectors"]
SMALL = 10  # the buckets of C6 here: the vectors of this many buckets are checked on the server
FIELDS = f"I2:log,I5:log,C1,C2,C3:hash:4096,C6:hash:{SMALL},C14"
NAMES = ["I2", "I5", "C1", "C2", "C3", "C6", "C14"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The generated shards and the models directory of an AFM trained on them."""
    data = tmp_path_factory.mktemp("criteo-like")
    write(data, 6_000, shards=3, seed=5, row_group_rows=1_000)
    models = tmp_path_factory.mktemp("models")
    argv = [
        "train", "--data", str(data), "--fields", FIELDS, "--epochs", "1", "--embedding-dim",
        "8", "--attention-dim", "8", "--threads", "1", "--name", "criteo-hashed", "--out",
        str(models),
    ]  # fmt: skip
    train(train_options(parse_args(argv)))
    return data, models


@pytest.fixture(scope="module")
def hashed_server(
    trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    with serving_a_copy(trained[1], tmp_path_factory.mktemp("hashed-server")) as running:
        yield running


@pytest.fixture(scope="module")
def bundle(trained: tuple[Path, Path]) -> bundles.Bundle:
    return bundles.read(bundles.resolve(trained[1], "criteo-hashed"))


@pytest.fixture(scope="module")
def base_row(trained: tuple[Path, Path]) -> dict[str, Any]:
    """The first generated row with every field present."""
    table = ds.dataset(trained[0], format="parquet").to_table(columns=NAMES)
    row = next(r for r in table.to_pylist() if None not in r.values())
    return {k: (float(v) if k.startswith("I") else v) for k, v in row.items()}


def predict(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/predict", json=body, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def slot_scores(bundle: bundles.Bundle, row: dict[str, Any], field: str) -> np.ndarray:
    """The graph's score of `row` with `field` put in each slot of its block in turn."""
    f = bundle.encoder.field(field)
    encoded = bundle.encoder.encode({name: [row[name]] * f.size for name in bundle.encoder.names})
    encoded.index[:, bundle.encoder.names.index(field)] = np.arange(f.offset, f.offset + f.size)
    (scores,) = bundle.session().run(
        ["score"], {"feature_index": encoded.index, "feature_value": encoded.value}
    )
    return np.asarray(scores)


def test_server_hashes_the_shared_vectors_into_the_slots_they_name(hashed_server, bundle, base_row):
    by_slot = slot_scores(bundle, base_row, "C6")
    assert len(np.unique(by_slot.round(6))) == SMALL  # each slot scores apart: a slot is visible
    vectors = [v for v in VECTORS if v["buckets"] == SMALL]
    assert {type(v["value"]) for v in vectors} == {str, int}
    rows = [{**base_row, "C6": v["value"]} for v in vectors]
    scores = np.asarray(predict(hashed_server, {"instances": rows})["scores"])
    np.testing.assert_allclose(scores, by_slot[[v["index"] for v in vectors]], atol=1e-6)


def test_explain_query_hashes_text_as_predict_does(hashed_server, bundle, base_row):
    by_slot = slot_scores(bundle, base_row, "C6")
    with hashed_server.client() as client:
        for vector in [v for v in VECTORS if v["buckets"] == SMALL][:4]:
            answer = client.explain({**base_row, "C6": str(vector["value"])})
            assert answer["score"] == pytest.approx(by_slot[vector["index"]], abs=1e-6)


def test_an_integer_id_scores_as_its_decimal_text_in_instances_and_in_a_context(
    hashed_server, base_row
):
    as_int = predict(hashed_server, {"instances": [{**base_row, "C3": 123456789012}]})
    as_text = predict(hashed_server, {"instances": [{**base_row, "C3": "123456789012"}]})
    assert as_int["scores"] == as_text["scores"]
    context = {k: v for k, v in base_row.items() if k != "C1"}
    candidates = [{"C1": base_row["C1"]}, {"C1": "never-seen"}]
    ranked = predict(hashed_server, {"context": {**context, "C3": 42}, "candidates": candidates})
    rows = [{**context, "C3": "42", **c} for c in candidates]
    np.testing.assert_allclose(
        ranked["scores"], predict(hashed_server, {"instances": rows})["scores"], atol=1e-6
    )


def test_a_hashed_field_never_counts_an_unknown_value(hashed_server, base_row):
    row = {**base_row, "C3": "never-seen-id", "C6": "", "C1": "never-seen-too"}
    answer = predict(hashed_server, {"instances": [row]})
    assert answer["unknown_values"] == {"C1": 1, "C2": 0, "C14": 0}
    context = {k: v for k, v in row.items() if k != "C2"}
    ranked = predict(hashed_server, {"context": context, "candidates": [{"C2": "x"}] * 3})
    assert "C3" not in ranked["unknown_values"] and "C6" not in ranked["unknown_values"]
    assert "C3" not in ranked["clipped_values"] and "C6" not in ranked["clipped_values"]
    assert ranked["unknown_values"]["C1"] == 3


def test_explanations_name_the_raw_value_given(hashed_server, base_row):
    pairs = len(NAMES) * (len(NAMES) - 1) // 2
    row = {**base_row, "C3": 42}
    answer = predict(hashed_server, {"instances": [row], "explain": True, "top_k": pairs})
    with_c3 = [p for p in answer["explanations"][0]["top_pairs"] if "C3" in p["fields"]]
    assert len(with_c3) == len(NAMES) - 1
    assert all(p["values"][p["fields"].index("C3")] == 42 for p in with_c3)
    with hashed_server.client() as client:
        explained = client.explain({**base_row, "C3": "user-123"})
    assert {t["field"]: t["value"] for t in explained["linear"]}["C3"] == "user-123"
    assert all(
        p["values"][p["fields"].index("C3")] == "user-123"
        for p in explained["pairs"]
        if "C3" in p["fields"]
    )


def test_model_card_and_openapi_show_the_fields_as_hashed(hashed_server, bundle):
    with hashed_server.client() as client:
        card = {f["name"]: f for f in client.model()["fields"]}
    assert (card["C3"]["kind"], card["C3"]["cardinality"]) == ("hash", 4096)
    assert (card["C6"]["kind"], card["C6"]["cardinality"]) == ("hash", SMALL)
    assert card["C6"]["examples"] == bundle.encoder.field("C6").examples(3)
    assert len(card["C6"]["examples"]) == 3  # the most frequent training values
    assert card["C1"]["kind"] == "categorical"
    document = httpx.get(f"{hashed_server.url}/openapi.json", timeout=30).json()
    text = json.dumps(document)
    assert f"hashed into {SMALL:,} slots" in text and "hashed into 4,096 slots" in text
    explain = {p["name"]: p for p in document["paths"]["/explain"]["get"]["parameters"]}
    assert explain["C3"]["schema"]["type"] == "string"
    assert explain["C3"]["description"] == "hash field"


def test_wrong_types_for_a_hashed_field_are_a_4xx_naming_it(hashed_server, base_row):
    for value in (4.5, True, None, ["a"]):
        response = httpx.post(
            f"{hashed_server.url}/predict",
            json={"instances": [{**base_row, "C3": value}]},
            timeout=30,
        )
        assert response.status_code == 422, value
        fields = [d["field"] for d in response.json()["error"]["details"]]
        assert any("C3" in f for f in fields), fields


def test_generated_rows_score_on_the_server_as_the_bundle_scores_them(
    hashed_server, bundle, trained
):
    table = ds.dataset(trained[0], format="parquet").to_table(columns=NAMES)
    rows = [r for r in table.slice(0, 300).to_pylist() if None not in r.values()]
    rows = [{k: (float(v) if k.startswith("I") else v) for k, v in r.items()} for r in rows]
    served = predict(hashed_server, {"instances": rows})["scores"]
    columns = {name: [r[name] for r in rows] for name in NAMES}
    np.testing.assert_allclose(served, bundle.score(columns), atol=1e-6)
    assert min(served) > 0 and max(served) < 1
