"""End to end: the real server process (torch blocked) called over HTTP through the client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence

import httpx
import numpy as np
import pytest

from service.client import AFMClient, AFMError, AsyncAFMClient
from service.schemas import ExplainResponse, ModelInfo, PredictResponse
from tests.service.conftest import API_KEY, CONTEXT, Server, candidate_items
from training import bundle as bundles


def offline_scores(bundle: bundles.Bundle, rows: Sequence[Mapping[str, object]]) -> np.ndarray:
    """Score rows without the service: the bundle's encoder and a plain onnxruntime session."""
    columns = {name: [row[name] for row in rows] for name in bundle.encoder.names}
    encoded = bundle.encoder.encode(columns)
    feeds = {"feature_index": encoded.index, "feature_value": encoded.value}
    scores: np.ndarray = bundle.session().run(["score"], feeds)[0]
    return scores


def test_health_and_readiness_answer(client: AFMClient) -> None:
    assert client.health() == {"status": "ok"}
    assert client.ready() is True


def test_backend_ranking_of_100_candidates_matches_offline_scoring(
    client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    items = candidate_items(served_bundle, 100)
    answer = client.rank(CONTEXT, [{"item": item} for item in items])
    PredictResponse.model_validate(answer)
    assert answer["model"] == {"name": served_bundle.name, "version": served_bundle.version}
    assert answer["task"] == served_bundle.task
    expected = offline_scores(served_bundle, [{**CONTEXT, "item": item} for item in items])
    assert len(answer["scores"]) == 100
    np.testing.assert_allclose(np.array(answer["scores"]), expected, rtol=0, atol=1e-6)
    assert np.unique(np.round(expected, 6)).size > 1
    assert "explanations" not in answer
    assert answer["unknown_values"]["item"] == 0


def test_ranking_explanations_add_up_to_raw(
    client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    items = candidate_items(served_bundle, 100)
    pairs = len(served_bundle.pairs)
    answer = client.rank(CONTEXT, [{"item": i} for i in items], explain=True, top_k=pairs)
    explanations = answer["explanations"]
    assert len(explanations) == 100
    for item, explanation in zip(items[:5], explanations[:5], strict=False):
        row = {**CONTEXT, "item": item}
        single = client.explain(row)
        ExplainResponse.model_validate(single)
        parts = single["bias"] + sum(t["contribution"] for t in single["linear"])
        parts += sum(p["contribution"] for p in single["pairs"])
        assert parts == pytest.approx(single["raw"], abs=1e-5)
        assert explanation["raw"] == pytest.approx(single["raw"], abs=1e-5)
        assert len(explanation["top_pairs"]) == pairs
        pair_sum = sum(p["contribution"] for p in explanation["top_pairs"])
        linear_sum = sum(t["contribution"] for t in single["linear"])
        assert explanation["bias"] + linear_sum + pair_sum == pytest.approx(
            explanation["raw"], abs=1e-5
        )
        first = explanation["top_pairs"][0]
        assert first["values"] == [row[first["fields"][0]], row[first["fields"][1]]]


def test_instances_and_ranking_shapes_give_the_same_scores(
    client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    items = candidate_items(served_bundle, 7)
    rows = [{**CONTEXT, "item": item} for item in items]
    ranked = client.rank(CONTEXT, [{"item": item} for item in items])
    predicted = client.predict(rows)
    assert predicted["scores"] == pytest.approx(ranked["scores"], abs=1e-7)
    np.testing.assert_allclose(predicted["scores"], offline_scores(served_bundle, rows), atol=1e-6)


def test_any_split_of_fields_between_context_and_candidates_is_accepted(
    client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    items = candidate_items(served_bundle, 4)
    rows = [{**CONTEXT, "item": item, "price": 0.5 + i} for i, item in enumerate(items)]
    context = {k: v for k, v in CONTEXT.items() if k not in ("user", "price")} | {"item": items[0]}
    candidates = [{"user": "1", "price": row["price"]} for row in rows]
    answer = client.rank(context, candidates)
    expected = offline_scores(served_bundle, [{**context, **c} for c in candidates])
    np.testing.assert_allclose(answer["scores"], expected, atol=1e-6)
    everything = client.rank({**CONTEXT, "item": items[0]}, [{}, {}])
    assert everything["scores"][0] == everything["scores"][1]


def test_predict_explains_only_when_asked_with_top_k_pairs_sorted(
    client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    rows = [{**CONTEXT, "item": item} for item in candidate_items(served_bundle, 3)]
    plain = client.predict(rows)
    assert "explanations" not in plain
    explained = client.predict(rows, explain=True, top_k=4)
    assert explained["scores"] == plain["scores"]
    for explanation in explained["explanations"]:
        sizes = [abs(p["contribution"]) for p in explanation["top_pairs"]]
        assert len(sizes) == 4
        assert sizes == sorted(sizes, reverse=True)
        assert explanation["bias"] == pytest.approx(served_bundle.bias)
    default = client.predict(rows, explain=True)
    assert len(default["explanations"][0]["top_pairs"]) == 5


def test_unseen_values_are_scored_through_oov_and_counted(
    client: AFMClient, server: Server, served_bundle: bundles.Bundle
) -> None:
    before = _metric(client.metrics(), 'afm_unseen_values_total{field="item"}')
    known = candidate_items(served_bundle, 2)
    unseen = ["never-seen-item", "ünïcødé-项目-🙂", "x" * 1024]
    answer = client.rank(CONTEXT, [{"item": i} for i in [*known, *unseen]])
    assert answer["unknown_values"]["item"] == 3
    assert answer["unknown_values"]["user"] == 0
    assert answer["scores"][2] == answer["scores"][3] == answer["scores"][4]
    assert _metric(client.metrics(), 'afm_unseen_values_total{field="item"}') == before + 3
    stranger = client.rank({**CONTEXT, "user": "no-such-user"}, [{"item": i} for i in known])
    assert stranger["unknown_values"]["user"] == 2


def test_explain_lists_every_pair_sorted_with_names_values_and_attention(
    client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    row = {**CONTEXT, "item": candidate_items(served_bundle, 1)[0]}
    answer = client.explain(row, top_k=3)
    assert [t["field"] for t in answer["linear"]] == served_bundle.encoder.names
    assert [t["value"] for t in answer["linear"]] == [row[n] for n in served_bundle.encoder.names]
    assert {tuple(p["fields"]) for p in answer["pairs"]} == set(served_bundle.pairs)
    sizes = [abs(p["contribution"]) for p in answer["pairs"]]
    assert sizes == sorted(sizes, reverse=True)
    assert sum(p["attention"] for p in answer["pairs"]) == pytest.approx(1.0, abs=1e-5)
    assert answer["top_pairs"] == answer["pairs"][:3]
    assert answer["score"] == pytest.approx(offline_scores(served_bundle, [row])[0], abs=1e-6)
    assert answer["score"] == pytest.approx(1 / (1 + np.exp(-answer["raw"])), abs=1e-6)


def test_model_card_lists_fields_examples_metrics_and_global_attention(
    client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    card = client.model()
    ModelInfo.model_validate(card)
    assert (card["name"], card["version"], card["task"]) == (
        served_bundle.name,
        served_bundle.version,
        served_bundle.task,
    )
    fields = {f["name"]: f for f in card["fields"]}
    assert list(fields) == served_bundle.encoder.names
    item = served_bundle.encoder.categorical("item")
    assert fields["item"]["cardinality"] == len(item.vocabulary)
    assert fields["item"]["examples"] == list(item.vocabulary)[:3]
    assert fields["price"]["kind"] == "numeric"
    assert served_bundle.manifest.metrics is not None
    assert card["metrics"] == served_bundle.manifest.metrics.model_dump()
    assert len(card["global_attention"]) == len(served_bundle.pairs)


def test_metrics_count_requests_durations_rows_and_name_the_model(client: AFMClient) -> None:
    before = _metric(
        client.metrics(), 'afm_requests_total{method="GET",route="/healthz",status="200"}'
    )
    client.health()
    client.rank(CONTEXT, [{"item": "1"}, {"item": "2"}])
    text = client.metrics()
    after = _metric(text, 'afm_requests_total{method="GET",route="/healthz",status="200"}')
    assert after == before + 1
    assert _metric(text, 'afm_request_duration_seconds_count{route="/predict"}') >= 1
    assert _metric(text, "afm_inference_duration_seconds_count") >= 1
    assert _metric(text, "afm_inference_rows_sum") >= 2
    assert re.search(r'afm_model_info\{name="synthetic-afm",task="ctr",version="1"\} 1\.0', text)
    assert _metric(text, "afm_ready") == 1.0


def test_request_id_is_honoured_and_the_replica_named(server: Server) -> None:
    response = httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "req-42"})
    assert response.headers["x-request-id"] == "req-42"
    assert response.headers["x-served-by"] == "replica-test"
    made = httpx.get(f"{server.url}/nowhere")
    assert made.status_code == 404
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert made.headers["x-served-by"] == "replica-test"


def test_logs_are_json_lines_carrying_the_request_id(server: Server) -> None:
    httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "log-me-7"})
    for _ in range(50):
        entries = [e for e in server.logs() if e.get("request_id") == "log-me-7"]
        if entries:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert entries and entries[0]["route"] == "/healthz" and entries[0]["status"] == 200
    assert any(e.get("message") == "serving model" for e in server.logs())


def test_openapi_and_docs_show_the_real_field_names(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    schemas = document["components"]["schemas"]
    instance = schemas["Instance"]
    assert list(instance["properties"]) == served_bundle.encoder.names
    assert instance["properties"]["user"]["type"] == "string"
    assert instance["properties"]["price"]["type"] == "number"
    assert (
        instance["properties"]["daytime"]["examples"][0]
        in served_bundle.encoder.categorical("daytime").vocabulary
    )
    assert instance["additionalProperties"] is False
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert len(body["schema"]["oneOf"]) == 2
    parameters = [p["name"] for p in document["paths"]["/explain"]["get"]["parameters"]]
    assert parameters == [*served_bundle.encoder.names, "top_k"]
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_openapi_examples_are_valid_requests(server: Server) -> None:
    document = httpx.get(f"{server.url}/openapi.json").json()
    examples = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    for example in examples["examples"].values():
        response = httpx.post(f"{server.url}/predict", json=example["value"])
        assert response.status_code == 200, response.text


def test_admin_reload_needs_a_valid_api_key(server: Server) -> None:
    with server.client() as anonymous, pytest.raises(AFMError) as missing:
        anonymous.reload()
    assert missing.value.status_code == 401 and missing.value.fields == ["x-api-key"]
    with server.client(api_key="wrong") as stranger, pytest.raises(AFMError) as wrong:
        stranger.reload()
    assert wrong.value.status_code == 401


def test_async_client_scores_like_the_sync_client(
    client: AFMClient, server: Server, served_bundle: bundles.Bundle
) -> None:
    items = candidate_items(served_bundle, 5)
    candidates = [{"item": item} for item in items]

    async def calls() -> None:
        async with AsyncAFMClient(server.url, api_key=API_KEY) as afm:
            ranked, predicted, explained = await asyncio.gather(
                afm.rank(CONTEXT, candidates),
                afm.predict([{**CONTEXT, "item": items[0]}], explain=True, top_k=2),
                afm.explain({**CONTEXT, "item": items[0]}),
            )
            assert ranked["scores"] == client.rank(CONTEXT, candidates)["scores"]
            assert predicted["scores"][0] == pytest.approx(ranked["scores"][0])
            assert len(predicted["explanations"][0]["top_pairs"]) == 2
            assert explained["score"] == pytest.approx(ranked["scores"][0], abs=1e-6)
            assert (await afm.model())["name"] == served_bundle.name
            assert await afm.health() == {"status": "ok"}
            assert await afm.ready() is True

    asyncio.run(calls())


def test_client_errors_carry_status_code_and_fields(client: AFMClient) -> None:
    with pytest.raises(AFMError) as error:
        client.rank(CONTEXT, [{"item": "1"}, {"colour": "red"}])
    assert error.value.status_code == 422
    assert error.value.code == "validation_error"
    assert error.value.fields == ["candidates[1].colour"]
    with pytest.raises(AFMError) as missing:
        client.rank(CONTEXT, [{"item": "1"}, {}])
    assert missing.value.fields == ["candidates[1].item"]


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
