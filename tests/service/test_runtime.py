"""In-process tests of the runtime (encode, predict, explain), settings, errors and logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from service.__main__ import main as service_main
from service.api import create_app
from service.client import AFMError, AsyncAFMClient
from service.errors import BundleRefused, NotReady, ValidationFailed, field_path
from service.logging_config import JSONFormatter, request_id
from service.runtime import ModelRuntime, ServedModel
from service.settings import Settings
from tests.service.conftest import API_KEY, CONTEXT, candidate_items
from training import bundle as bundles
from training.bundle.features import CategoricalField


@pytest.fixture(scope="module")
def model(models_dir: Path) -> ServedModel:
    return ModelRuntime(Settings(models_dir=models_dir)).load()


def ranking_body(
    context: Mapping[str, object], candidates: Sequence[Mapping[str, object]], **extra: object
) -> bytes:
    return orjson.dumps({"context": context, "candidates": candidates, **extra})


def test_ranking_encodes_the_context_once_and_matches_whole_rows(model: ServedModel) -> None:
    items = [*candidate_items(model.bundle, 6), "unseen-item"]
    for context in (CONTEXT, {**CONTEXT, "user": "unseen-user", "price": -3.25}):
        request = model.schemas.parse_predict(ranking_body(context, [{"item": i} for i in items]))
        for _ in range(2):
            batch = model.encode(request)
            rows = [{**context, "item": item} for item in items]
            whole = model.encoder.encode({n: [r[n] for r in rows] for n in model.names})
            np.testing.assert_array_equal(batch.index, whole.index)
            np.testing.assert_array_equal(batch.value, whole.value)
            assert batch.unseen == whole.unseen


def test_predict_scores_equal_a_plain_session_run(model: ServedModel) -> None:
    items = candidate_items(model.bundle, 20)
    answer = model.predict(
        model.schemas.parse_predict(ranking_body(CONTEXT, [{"item": i} for i in items]))
    )
    rows = [{**CONTEXT, "item": item} for item in items]
    encoded = model.encoder.encode({n: [r[n] for r in rows] for n in model.names})
    session = model.bundle.session()
    expected = session.run(
        ["score"], {"feature_index": encoded.index, "feature_value": encoded.value}
    )
    np.testing.assert_array_equal(answer["scores"], expected[0])


def test_explain_parts_add_up_to_raw_and_attention_sums_to_one(model: ServedModel) -> None:
    for item in candidate_items(model.bundle, 3):
        answer = model.explain({**CONTEXT, "item": item})
        parts = answer["bias"] + sum(t["contribution"] for t in answer["linear"])
        parts += sum(p["contribution"] for p in answer["pairs"])
        assert parts == pytest.approx(answer["raw"], abs=1e-5)
        assert len(answer["pairs"]) == len(model.pairs)
        assert sum(p["attention"] for p in answer["pairs"]) == pytest.approx(1.0, abs=1e-5)
        assert "top_pairs" not in answer


def test_explain_query_parses_numbers_and_refuses_repeated_fields(model: ServedModel) -> None:
    params = [(k, str(v)) for k, v in {**CONTEXT, "item": "1"}.items()]
    row = model.schemas.parse_explain_query(params, top_k=2)
    assert row["price"] == 1.5
    answer = model.explain(row, top_k=2)
    assert answer["linear"][-1] == {**answer["linear"][-1], "field": "price", "value": 1.5}
    assert answer["top_pairs"] == answer["pairs"][:2]
    with pytest.raises(ValidationFailed) as repeated:
        model.schemas.parse_explain_query([*params, ("item", "2")], top_k=None)
    assert repeated.value.details == [("item", "given more than once")]


def test_explain_query_refuses_top_k_beyond_the_pairs(model: ServedModel) -> None:
    params = [(k, str(v)) for k, v in {**CONTEXT, "item": "1"}.items()]
    pairs = len(model.pairs)
    assert model.schemas.parse_explain_query([*params, ("top_k", "1")], top_k=pairs)
    with pytest.raises(ValidationFailed) as failed:
        model.schemas.parse_explain_query(params, top_k=pairs + 1)
    assert failed.value.details == [("top_k", f"greater than {pairs}")]


def test_unseen_values_count_scored_rows_in_both_shapes(model: ServedModel) -> None:
    context = {**CONTEXT, "user": "nobody"}
    candidates = [{"item": "1"}, {"item": "nothing"}, {"item": "nothing"}]
    ranked = model.predict(model.schemas.parse_predict(ranking_body(context, candidates)))
    rows = [{**context, **c} for c in candidates]
    whole = model.predict(model.schemas.parse_predict(orjson.dumps({"instances": rows})))
    assert ranked["unknown_values"] == whole["unknown_values"]
    assert ranked["unknown_values"]["user"] == 3
    assert ranked["unknown_values"]["item"] == 2
    assert "price" not in ranked["unknown_values"]


def test_cover_errors_name_each_candidate_field(model: ServedModel) -> None:
    candidates = [{"item": "1"}, {"item": "2", "city": "3"}, {}]
    with pytest.raises(ValidationFailed) as failed:
        model.schemas.parse_predict(ranking_body(CONTEXT, candidates))
    assert failed.value.status_code == 422
    assert failed.value.details == [
        ("candidates[1].city", "given in both context and candidates"),
        ("candidates[2].item", "missing (in neither context nor here)"),
    ]
    context = {k: v for k, v in CONTEXT.items() if k != "city"}
    with pytest.raises(ValidationFailed) as absent:
        model.schemas.parse_predict(ranking_body(context, [{"item": "1"}] * 80))
    assert absent.value.details == [
        ("context.city", "missing (in neither context nor any candidate)")
    ]


@pytest.mark.parametrize(
    "candidates",
    [
        [{"item": "1", "city": "3"}, {"user": "2"}],  # right sizes, a context field, item absent
        [{"item": "1"}, {"city": "3"}],  # right sizes, one candidate swaps item for city
        [{"item": "1", "city": "3"}],  # item plus a context field
    ],
)
def test_a_ranking_request_that_misses_or_repeats_a_field_is_refused(
    model: ServedModel, candidates: list[dict[str, str]]
) -> None:
    with pytest.raises(ValidationFailed) as failed:
        model.schemas.parse_predict(ranking_body(CONTEXT, candidates))
    assert failed.value.message.startswith("context and each candidate together")
    assert all(field.startswith("candidates[") for field, _ in failed.value.details)


def test_any_split_between_context_and_candidates_is_accepted(model: ServedModel) -> None:
    row = {**CONTEXT, "item": "1"}
    whole = model.predict(model.schemas.parse_predict(orjson.dumps({"instances": [row] * 2})))
    for shared in ([], ["user"], [n for n in model.names if n != "item"], list(model.names)):
        context = {n: row[n] for n in shared}
        candidate = {n: v for n, v in row.items() if n not in context}
        request = model.schemas.parse_predict(ranking_body(context, [candidate] * 2))
        assert request.ranking and len(request.rows) == 2
        np.testing.assert_array_equal(model.predict(request)["scores"], whole["scores"])


def test_runtime_is_not_ready_until_a_bundle_loads(tmp_path: Path) -> None:
    runtime = ModelRuntime(Settings(models_dir=tmp_path))
    with pytest.raises(NotReady):
        _ = runtime.model
    assert not runtime.ready


def test_readyz_is_503_until_a_bundle_is_loaded_then_reload_makes_it_ready(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {"models_dir": tmp_path, "api_keys": API_KEY, "access_log": False}
    )
    app = create_app(settings)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with AsyncAFMClient(
            "http://test", api_key=API_KEY, retries=0, transport=transport
        ) as afm:
            assert await afm.health() == {"status": "ok"}
            assert await afm.ready() is False
            raw = await afm._http.get("/readyz")
            assert raw.status_code == 503 and raw.headers["retry-after"] == "1"
            assert raw.json()["error"]["code"] == "not_ready"
            with pytest.raises(AFMError) as early:
                await afm.rank(CONTEXT, [{"item": "1"}])
            assert early.value.status_code == 503
            shutil.copytree(tiny_bundle, tmp_path / "synthetic-afm" / "1")
            assert (await afm.reload())["model"] == {"name": "synthetic-afm", "version": 1}
            assert await afm.ready() is True
            assert len((await afm.rank(CONTEXT, [{"item": "1"}]))["scores"]) == 1

    asyncio.run(scenario())


def test_admin_routes_are_disabled_without_configured_keys(tmp_path: Path) -> None:
    app = create_app(Settings(models_dir=tmp_path, access_log=False))

    async def scenario() -> int:
        async with AsyncAFMClient(
            "http://test", api_key="any", transport=httpx.ASGITransport(app)
        ) as afm:
            with pytest.raises(AFMError) as refused:
                await afm.reload()
            return refused.value.status_code

    assert asyncio.run(scenario()) == 403


def test_settings_come_from_the_environment_with_documented_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in [n for n in os.environ if n.startswith("AFM_")]:
        monkeypatch.delenv(name)
    defaults = Settings()
    assert defaults.models_dir == Path("models") and defaults.port == 8000
    assert defaults.model_name is None and defaults.api_keys == []
    assert defaults.replica == socket.gethostname()
    assert all(f.description for f in Settings.model_fields.values())
    monkeypatch.setenv("AFM_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("AFM_MODEL_NAME", "demo-afm")
    monkeypatch.setenv("AFM_PORT", "9001")
    monkeypatch.setenv("AFM_API_KEYS", "key-alpha, key-beta")
    monkeypatch.setenv("AFM_REPLICA", "api-3")
    settings = Settings()
    assert settings.models_dir == tmp_path and settings.model_name == "demo-afm"
    assert settings.port == 9001 and settings.replica == "api-3"
    assert [k.get_secret_value() for k in settings.api_keys] == ["key-alpha", "key-beta"]
    assert "key-alpha" not in repr(settings)


def test_command_line_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        service_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--models-dir", "--model-name"):
        assert option in text


def test_field_paths_read_like_the_request() -> None:
    assert field_path(("candidates", 3, "item")) == "candidates[3].item"
    assert field_path(("context", "price")) == "context.price"
    assert field_path(()) == "body"


def test_log_lines_are_json_with_the_request_id() -> None:
    record = logging.makeLogRecord(
        {"name": "service.api", "levelno": logging.INFO, "levelname": "INFO", "msg": "request"}
    )
    record.status = 200
    token = request_id.set("abc")
    try:
        line = json.loads(JSONFormatter().format(record))
    finally:
        request_id.reset(token)
    assert line["request_id"] == "abc" and line["status"] == 200 and line["message"] == "request"


def test_model_card_is_built_from_the_manifest(model: ServedModel, tiny_bundle: Path) -> None:
    manifest = bundles.read(tiny_bundle).manifest
    card = model.card()
    assert card["created"] == manifest.created
    assert card["pairs"] == len(manifest.pairs)
    assert [f["name"] for f in card["fields"]] == [f.name for f in manifest.fields]


def test_warm_up_scores_every_vocabulary_value_of_every_field(
    model: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    fed: list[np.ndarray] = []
    session = model.session

    class Recording:
        def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            fed.append(feeds["feature_index"])
            return list(session.run(outputs, feeds))

    monkeypatch.setattr(model, "session", Recording())
    model.warm_up([1, 8, 300])
    scored = set(np.concatenate([index.reshape(-1) for index in fed]).tolist())
    for field in model.encoder.fields:
        if isinstance(field, CategoricalField):
            assert {field.offset, *field.vocabulary.values()} <= scored, field.name
    assert {index.shape[0] for index in fed} == {1, 8, 300}


def test_served_version_is_the_folders_and_a_mismatch_with_the_manifest_is_refused(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    target = tmp_path / "synthetic-afm" / "3"
    shutil.copytree(tiny_bundle, target)
    runtime = ModelRuntime(Settings(models_dir=tmp_path))
    with pytest.raises(BundleRefused) as refused:
        runtime.load()
    assert "version mismatch: the folder is version 3, bundle.json says version 1" in str(
        refused.value.message
    )
    manifest = json.loads((target / "bundle.json").read_text())
    (target / "bundle.json").write_text(json.dumps({**manifest, "version": 3}))
    assert runtime.load().version == 3
