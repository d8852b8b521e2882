"""Numbers at and far beyond the training range, through the real server and in process: every
score is a finite number, never null, and clipped values are counted per field."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.runtime import ModelRuntime, ServedModel
from service.settings import Settings
from tests.service.conftest import CONTEXT, Server, candidate_items
from tests.training.test_bad_files import clicks, write_csv
from training import bundle as bundles
from training.cli import main as training_main

FAR = [1e308, -1e308, 1e39, -1e39, 1e-300]
JSON = {"content-type": "application/json"}


def ends(bundle: bundles.Bundle) -> tuple[float, float]:
    price = bundle.encoder.numeric("price")
    assert price.min is not None and price.max is not None
    return price.min, price.max


def prices(bundle: bundles.Bundle) -> list[float]:
    low, high = ends(bundle)
    return [*FAR, low, high]


def outside(bundle: bundles.Bundle, values: list[float]) -> int:
    low, high = ends(bundle)
    return sum(v < low or v > high for v in values)


def walk(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a JSON document with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, f"{where}[{i}]")
    else:
        yield where, value


def assert_no_null_and_finite(document: Any) -> None:
    for where, leaf in walk(document):
        assert leaf is not None, f"{where} is null"
        if isinstance(leaf, float):
            assert math.isfinite(leaf), f"{where} is {leaf}"


def post(server: Server, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{server.url}/predict", content=orjson.dumps(body), headers=JSON, timeout=30
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = orjson.loads(response.content)
    assert_no_null_and_finite(answer)
    return answer


def explain(server: Server, row: dict[str, Any], top_k: int | None = None) -> dict[str, Any]:
    params = {name: str(value) for name, value in row.items()}
    if top_k is not None:
        params["top_k"] = str(top_k)
    response = httpx.get(f"{server.url}/explain", params=params, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = orjson.loads(response.content)
    assert_no_null_and_finite(answer)
    return answer


def clipped_total(server: Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith('afm_clipped_values_total{field="price"} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_far_numbers_score_as_the_training_extremes_and_are_counted(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    item = candidate_items(served_bundle, 1)[0]
    values = prices(served_bundle)
    before = clipped_total(server)
    answer = post(
        server,
        {"instances": [{**CONTEXT, "item": item, "price": v} for v in values], "explain": True},
    )
    scores = answer["scores"]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    at = dict(zip(values, scores, strict=True))
    low, high = ends(served_bundle)
    assert at[1e308] == at[1e39] == pytest.approx(at[high], abs=1e-7)
    assert at[-1e308] == at[-1e39] == pytest.approx(at[low], abs=1e-7)
    assert answer["clipped_values"] == {"price": outside(served_bundle, values)}
    assert answer["clipped_values"]["price"] == 4  # the training range holds 1e-300 and its ends
    assert answer["unknown_values"]["item"] == 0
    assert clipped_total(server) == before + 4


@pytest.mark.parametrize("price", [*FAR, "low", "high"])
def test_a_far_context_number_is_counted_once_per_candidate_in_ranking(
    server: Server, served_bundle: bundles.Bundle, price: float | str
) -> None:
    low, high = ends(served_bundle)
    value = {"low": low, "high": high}.get(price, price) if isinstance(price, str) else price
    items = candidate_items(served_bundle, 3)
    body = {"context": {**CONTEXT, "price": value}, "candidates": [{"item": i} for i in items]}
    first = post(server, {**body, "explain": True, "top_k": 3})
    again = post(server, body)  # the context value now comes from the memo
    expected = 3 * outside(served_bundle, [float(value)])
    assert first["clipped_values"] == again["clipped_values"] == {"price": expected}
    assert first["scores"] == again["scores"]


def test_far_candidate_numbers_rank_with_finite_scores(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    item = candidate_items(served_bundle, 1)[0]
    context = {k: v for k, v in CONTEXT.items() if k != "price"}
    values = prices(served_bundle)
    answer = post(
        server,
        {"context": {**context, "item": item}, "candidates": [{"price": v} for v in values]},
    )
    assert len(answer["scores"]) == len(values)
    assert answer["clipped_values"] == {"price": outside(served_bundle, values)}


@pytest.mark.parametrize("price", [*FAR, "low", "high"])
def test_explain_takes_far_numbers_apart_into_finite_terms(
    server: Server, served_bundle: bundles.Bundle, price: float | str
) -> None:
    low, high = ends(served_bundle)
    value = {"low": low, "high": high}.get(price, price) if isinstance(price, str) else price
    row = {**CONTEXT, "item": candidate_items(served_bundle, 1)[0], "price": value}
    answer = explain(server, row, top_k=2)
    total = answer["bias"] + sum(t["contribution"] for t in answer["linear"])
    total += sum(p["contribution"] for p in answer["pairs"])
    assert total == pytest.approx(answer["raw"], abs=1e-4)
    assert answer["clipped_values"] == {"price": outside(served_bundle, [float(value)])}
    assert answer["unknown_values"]["user"] == 0


def test_no_number_in_a_predict_or_explain_answer_is_null(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    items = [*candidate_items(served_bundle, 4), "never-seen"]
    for price in prices(served_bundle):
        context = {**CONTEXT, "price": price, "user": "nobody"}
        post(server, {"context": context, "candidates": [{"item": i} for i in items]})
        post(server, {"context": context, "candidates": [{"item": i} for i in items],
                      "explain": True, "top_k": len(served_bundle.pairs)})  # fmt: skip
        post(server, {"instances": [{**context, "item": i} for i in items], "explain": True})
        explain(server, {**context, "item": items[-1]})
        explain(server, {**context, "item": items[0]}, top_k=1)


def test_a_number_too_large_for_a_double_is_refused_not_scored(server: Server) -> None:
    body = orjson.dumps({"instances": [{**CONTEXT, "item": "1"}]}).replace(b"1.5", b"1e400")
    response = httpx.post(f"{server.url}/predict", content=body, headers=JSON, timeout=30)
    assert response.status_code == 422
    assert "instances[0].price" in response.text


@pytest.fixture(scope="module")
def log_and_buckets(tmp_path_factory: pytest.TempPathFactory) -> ServedModel:
    """A model with a log field and a bucket field, served in process."""
    root = tmp_path_factory.mktemp("kinds")
    data = write_csv(root / "clicks.csv", clicks(rows=400))
    training_main(["train", "--quick", "--threads", "1", "--out", str(root / "models"),
                   "--data", str(data), "--label", "clicked", "--name", "kinds",
                   "--fields", "user,item,hour:bucket:4,device,price:log"])  # fmt: skip
    return ModelRuntime(Settings(models_dir=root / "models")).load("kinds")


def test_log_and_bucket_fields_take_numbers_and_count_what_they_clip(
    log_and_buckets: ServedModel,
) -> None:
    model = log_and_buckets
    hour, price = model.encoder.bucket("hour"), model.encoder.numeric("price")
    assert price.transform == "log1p" and hour.buckets == 4
    context = {"user": "u1", "item": "i1", "device": "ios"}
    numbers = [-1e308, -1e39, -1.0, 0.0, 1e-300, 3.0, 12.0, 23.0, 1e39, 1e308]
    body = {"context": context, "candidates": [{"hour": v, "price": v} for v in numbers]}
    answer = model.predict(model.parse_predict(orjson.dumps({**body, "explain": True})))
    scores = np.asarray(answer["scores"])
    assert np.isfinite(scores).all()
    assert hour.min is not None and hour.max is not None
    assert price.min is not None and price.max is not None
    low, high = price.min, price.max
    assert answer["clipped_values"] == {
        "hour": sum(v < hour.min or v > hour.max for v in numbers),
        "price": sum(v < 0 or not low <= math.log1p(max(v, 0.0)) <= high for v in numbers),
    }
    card = {f["name"]: f for f in model.card()["fields"]}
    assert (card["hour"]["kind"], card["hour"]["cardinality"]) == ("bucket", 4)
    assert card["price"]["kind"] == "numeric"
    as_context = {**context, "hour": 1e39, "price": -5.0}
    ranked = model.predict(
        model.parse_predict(orjson.dumps({"context": as_context, "candidates": [{}, {}]}))
    )
    assert ranked["clipped_values"] == {"hour": 2, "price": 2}
    row = model.schemas.parse_row({**{k: str(v) for k, v in as_context.items()}})
    explained = model.explain(row)
    assert explained["clipped_values"] == {"hour": 1, "price": 1}
    assert math.isfinite(explained["score"])
