"""Candidate-focused explanations (`"explain": {"focus": "candidates"}`) through the real server:
each candidate's terms add up to its raw score, its listed pairs all hold a candidate field and
are the ones `GET /explain` gives for that row, and the difference to the best candidate adds up
to the difference of raw scores (zero for the best itself)."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from service.schemas import PredictResponse
from tests.service.conftest import CONTEXT, Server, candidate_items
from training import bundle as bundles

TOLERANCE = 1e-5  # the graph's own invariant: raw == bias + linear + pairs to 1e-5

SPLITS = {
    "item": ["item"],
    "item and price": ["item", "price"],
    "item, price and user": ["item", "price", "user"],
}


def candidates_for(bundle: bundles.Bundle, fields: list[str], n: int) -> list[dict[str, Any]]:
    """n candidates that differ in every candidate field (distinct items, users and prices)."""
    items = candidate_items(bundle, n)
    users = list(bundle.encoder.categorical("user").vocabulary)[:n]
    values: dict[str, list[Any]] = {
        "item": items,
        "user": users[::-1],
        "price": [0.5 + i for i in range(n)],
    }
    return [{name: values[name][i] for name in fields} for i in range(n)]


def ask(server: Server, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=body, timeout=30)


def explained(
    server: Server, context: dict[str, Any], candidates: list[dict[str, Any]], top_k: int
) -> dict[str, Any]:
    body = {
        "context": context,
        "candidates": candidates,
        "explain": {"focus": "candidates"},
        "top_k": top_k,
    }
    response = ask(server, body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    PredictResponse.model_validate(answer)
    return answer


def parts(explanation: dict[str, Any]) -> float:
    """Every term of a candidate explanation, summed: it must give `raw`."""
    return float(
        explanation["bias"]
        + explanation["context_linear"]
        + sum(t["contribution"] for t in explanation["linear"])
        + explanation["context_pairs"]
        + sum(p["contribution"] for p in explanation["top_pairs"])
        + explanation["other_pairs"]
    )


def difference_parts(versus: dict[str, Any]) -> float:
    return float(
        versus["linear"]
        + versus["context_pairs"]
        + sum(p["difference"] for p in versus["top_pairs"])
        + versus["other_pairs"]
    )


def full_explanation(server: Server, row: dict[str, Any]) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/explain", params=row, timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("split", SPLITS.values(), ids=list(SPLITS))
def test_candidate_explanations_add_up_to_raw_and_name_only_candidate_fields(
    server: Server, served_bundle: bundles.Bundle, split: list[str]
) -> None:
    context = {k: v for k, v in CONTEXT.items() if k not in split}
    candidates = candidates_for(served_bundle, split, 6)
    all_pairs = len(served_bundle.pairs)
    shared_pairs = len(list(combinations(context, 2)))
    answer = explained(server, context, candidates, top_k=all_pairs)
    plain = ask(server, {"context": context, "candidates": candidates}).json()
    assert answer["scores"] == plain["scores"]
    rows = ask(
        server, {"context": context, "candidates": candidates, "explain": True, "top_k": 1}
    ).json()["explanations"]

    for i, (candidate, explanation) in enumerate(
        zip(candidates, answer["explanations"], strict=True)
    ):
        assert explanation["raw"] == pytest.approx(rows[i]["raw"], abs=1e-6)
        assert parts(explanation) == pytest.approx(explanation["raw"], abs=TOLERANCE)
        assert [t["field"] for t in explanation["linear"]] == [
            name for name in served_bundle.encoder.names if name in split
        ]
        listed = explanation["top_pairs"]
        assert len(listed) == all_pairs - shared_pairs
        assert all(set(p["fields"]) & set(split) for p in listed)
        magnitudes = [abs(p["contribution"]) for p in listed]
        assert magnitudes == sorted(magnitudes, reverse=True)
        assert explanation["other_pairs"] == 0.0  # every candidate pair is listed

        row = {**context, **candidate}
        whole = full_explanation(server, row)
        by_fields = {tuple(p["fields"]): p for p in whole["pairs"]}
        for pair in listed:
            truth = by_fields.pop(tuple(pair["fields"]))
            assert pair["values"] == truth["values"] == [row[f] for f in pair["fields"]]
            assert pair["contribution"] == pytest.approx(truth["contribution"], abs=1e-6)
            assert pair["attention"] == pytest.approx(truth["attention"], abs=1e-6)
        assert all(not set(fields) & set(split) for fields in by_fields)  # the context's pairs
        context_pairs = sum(p["contribution"] for p in by_fields.values())
        assert explanation["context_pairs"] == pytest.approx(context_pairs, abs=1e-6)
        context_linear = sum(t["contribution"] for t in whole["linear"] if t["field"] in context)
        assert explanation["context_linear"] == pytest.approx(context_linear, abs=1e-6)


def test_top_k_lists_the_largest_candidate_pairs_and_sums_the_rest(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    split = ["item", "price"]
    context = {k: v for k, v in CONTEXT.items() if k not in split}
    candidates = candidates_for(served_bundle, split, 5)
    every = explained(server, context, candidates, top_k=len(served_bundle.pairs))
    top = explained(server, context, candidates, top_k=3)
    for whole, short in zip(every["explanations"], top["explanations"], strict=True):
        assert short["top_pairs"] == whole["top_pairs"][:3]
        rest = sum(p["contribution"] for p in whole["top_pairs"][3:])
        assert short["other_pairs"] == pytest.approx(rest, abs=1e-6)
        assert short["other_pairs"] != 0.0
        assert parts(short) == pytest.approx(short["raw"], abs=TOLERANCE)
        assert len(short["versus_best"]["top_pairs"]) == 3
        assert difference_parts(short["versus_best"]) == pytest.approx(
            short["versus_best"]["raw_difference"], abs=TOLERANCE
        )


def test_versus_best_adds_up_to_the_raw_difference_and_is_zero_for_the_best(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    split = ["item", "price"]
    context = {k: v for k, v in CONTEXT.items() if k not in split}
    candidates = candidates_for(served_bundle, split, 8)
    answer = explained(server, context, candidates, top_k=len(served_bundle.pairs))
    explanations = answer["explanations"]
    best = int(np.argmax(answer["scores"]))
    raws = [e["raw"] for e in explanations]
    assert best == int(np.argmax(raws)) and len(set(raws)) > 1
    top = explanations[best]
    contributions = {tuple(p["fields"]): p["contribution"] for p in top["top_pairs"]}

    for i, explanation in enumerate(explanations):
        versus = explanation["versus_best"]
        assert versus["candidate"] == best
        assert versus["raw_difference"] == pytest.approx(raws[i] - raws[best], abs=1e-6)
        assert difference_parts(versus) == pytest.approx(versus["raw_difference"], abs=TOLERANCE)
        assert all(set(p["fields"]) & set(split) for p in versus["top_pairs"])
        magnitudes = [abs(p["difference"]) for p in versus["top_pairs"]]
        assert magnitudes == sorted(magnitudes, reverse=True)
        for pair in versus["top_pairs"]:
            fields = tuple(pair["fields"])
            own = next(p for p in explanation["top_pairs"] if tuple(p["fields"]) == fields)
            assert pair["values"] == own["values"]
            assert pair["best_values"] == [
                {**context, **candidates[best]}[f] for f in pair["fields"]
            ]
            assert pair["difference"] == pytest.approx(
                own["contribution"] - contributions[fields], abs=1e-9
            )
        if i != best:
            assert versus["raw_difference"] < 0
            assert any(p["difference"] != 0.0 for p in versus["top_pairs"])

    zero = explanations[best]["versus_best"]
    assert zero["raw_difference"] == 0.0
    assert zero["linear"] == zero["context_pairs"] == zero["other_pairs"] == 0.0
    assert all(p["difference"] == 0.0 for p in zero["top_pairs"])
    assert all(p["values"] == p["best_values"] for p in zero["top_pairs"])


def test_explain_true_and_focus_rows_answer_alike(server: Server) -> None:
    candidates = [{"item": "1"}, {"item": "2"}]
    base = {"context": {k: v for k, v in CONTEXT.items() if k != "item"}, "candidates": candidates}
    flag = ask(server, {**base, "explain": True, "top_k": 2}).json()
    for options in ({"focus": "rows"}, {}):
        answer = ask(server, {**base, "explain": options, "top_k": 2})
        assert answer.status_code == 200, answer.text
        assert answer.json() == flag
    assert "explanations" not in ask(server, {**base, "explain": False}).json()


ROW = {**CONTEXT, "item": "1"}
RANKING = {
    "context": {k: v for k, v in CONTEXT.items() if k != "item"},
    "candidates": [{"item": "1"}],
}
BAD_OPTIONS = {
    "focus not one of the two": (RANKING, {"focus": "everything"}, ["explain.focus"]),
    "focus null": (RANKING, {"focus": None}, ["explain.focus"]),
    "focus a number": (RANKING, {"focus": 1}, ["explain.focus"]),
    "an unknown option": (RANKING, {"focus": "candidates", "depth": 2}, ["explain.depth"]),
    "explain a string": (RANKING, "candidates", ["explain"]),
    "explain null": (RANKING, None, ["explain"]),
    "explain a list": (RANKING, ["candidates"], ["explain"]),
    "candidates focus on instances": (
        {"instances": [ROW]},
        {"focus": "candidates"},
        ["explain.focus"],
    ),
}


@pytest.mark.parametrize("shape,options,fields", BAD_OPTIONS.values(), ids=list(BAD_OPTIONS))
def test_bad_explain_options_are_422_naming_the_field(
    server: Server, shape: dict[str, Any], options: Any, fields: list[str]
) -> None:
    response = ask(server, {**shape, "explain": options})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert [d["field"] for d in error["details"]] == fields


def test_a_repeated_option_key_is_refused(server: Server) -> None:
    body = orjson.dumps({**RANKING, "explain": {"focus": "rows"}}).replace(
        b'{"focus":"rows"}', b'{"focus":"rows","focus":"candidates"}'
    )
    response = httpx.post(
        f"{server.url}/predict", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["error"]["details"]] == ["explain.focus"]


def test_openapi_shows_the_focus_option_and_the_candidate_explanation(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["ExplainOptions"]["properties"]["focus"]["enum"] == ["rows", "candidates"]
    assert schemas["ExplainOptions"]["additionalProperties"] is False
    explain = schemas["PredictRanking"]["properties"]["explain"]
    kinds = [c.get("type", c.get("$ref")) for c in explain["oneOf"]]
    assert kinds == ["boolean", "#/components/schemas/ExplainOptions"]
    explanations = schemas["PredictResponse"]["properties"]["explanations"]["anyOf"]
    items = [c["items"]["$ref"] for c in explanations if c.get("type") == "array"]
    assert items == [
        "#/components/schemas/RowExplanation",
        "#/components/schemas/CandidateExplanation",
    ]
    versus = schemas["VersusBest"]["properties"]
    assert {"raw_difference", "linear", "context_pairs", "top_pairs", "other_pairs"} <= set(versus)
