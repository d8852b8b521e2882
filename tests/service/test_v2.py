"""The Open Inference Protocol (KServe V2) with Triton's own HTTP client (`tritonclient.http`)
against a real server process: health, metadata, inference with the named fields and with the
graph's tensors (JSON and binary data), scores equal to `/predict`, and refusals that name the
input."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException, triton_to_np_dtype

from service.client import AFMClient
from tests.service.conftest import (
    CONTEXT,
    Server,
    candidate_items,
    copy_models,
    start_server,
)
from training import bundle as bundles

UNSEEN = "an item never seen in training"
NUMBERS = ("numeric", "bucket")  # field kinds sent as numbers; the others as BYTES


@pytest.fixture()
def triton_client(server: Server) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def rows_of(bundle: bundles.Bundle, n: int) -> list[dict[str, Any]]:
    """n whole rows: the shared context with known items, and one unseen item last."""
    return [{**CONTEXT, "item": item} for item in [*candidate_items(bundle, n - 1), UNSEEN]]


def field_inputs(
    bundle: bundles.Bundle,
    rows: list[dict[str, Any]],
    binary: bool,
    numbers: str = "FP64",
    column: bool = False,
) -> list[triton.InferInput]:
    """One input per field: `numbers` for numeric and bucket fields, BYTES for the others; shape [N]
    (or [N, 1] with `column`)."""
    inputs = []
    for field in bundle.encoder.fields:
        if field.kind not in NUMBERS:
            array = np.array([str(row[field.name]) for row in rows], dtype=np.object_)
            datatype = "BYTES"
        else:
            array = np.array([row[field.name] for row in rows], dtype=triton_to_np_dtype(numbers))
            datatype = numbers
        if column:
            array = array.reshape(-1, 1)
        tensor = triton.InferInput(field.name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def graph_inputs(
    bundle: bundles.Bundle, rows: list[dict[str, Any]], binary: bool
) -> list[triton.InferInput]:
    encoded = bundle.encoder.encode(
        {name: [row[name] for row in rows] for name in bundle.encoder.names}
    )
    inputs = []
    for name, array, datatype in (
        ("feature_index", encoded.index, "INT64"),
        ("feature_value", encoded.value, "FP32"),
    ):
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def outputs(*names: str, binary: bool = False) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


def refusal(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_tritonclient_sees_a_live_ready_server_and_the_served_model(
    triton_client: triton.InferenceServerClient, served_bundle: bundles.Bundle
) -> None:
    name, version = served_bundle.name, str(served_bundle.version)
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(name)
    assert triton_client.is_model_ready(name, version)
    assert not triton_client.is_model_ready("no-such-model")
    assert not triton_client.is_model_ready(name, str(served_bundle.version + 1))
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]

    metadata = triton_client.get_model_metadata(name, version)
    assert metadata["name"] == name and metadata["versions"] == [version]
    kinds = {f.name: f.kind for f in served_bundle.encoder.fields}
    assert [i["name"] for i in metadata["inputs"]] == served_bundle.encoder.names
    for tensor in metadata["inputs"]:
        assert tensor["datatype"] == ("FP32" if kinds[tensor["name"]] in NUMBERS else "BYTES")
        assert tensor["shape"] == [-1]
    fields, pairs = len(served_bundle.encoder.names), len(served_bundle.pairs)
    assert {o["name"]: o["shape"] for o in metadata["outputs"]} == {
        "score": [-1],
        "raw": [-1],
        "attention": [-1, pairs],
        "pair_contribution": [-1, pairs],
        "linear_contribution": [-1, fields],
    }
    assert metadata["parameters"]["graph_inputs"] == [
        {"name": "feature_index", "datatype": "INT64", "shape": [-1, fields]},
        {"name": "feature_value", "datatype": "FP32", "shape": [-1, fields]},
    ]
    assert triton_client.get_model_metadata(name) == metadata
    missing = refusal(lambda: triton_client.get_model_metadata("no-such-model"))
    assert missing.status() == "404" and "no-such-model" in str(missing.message())


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_named_fields_score_as_predict_does_unseen_values_counted(
    triton_client: triton.InferenceServerClient,
    client: AFMClient,
    served_bundle: bundles.Bundle,
    binary: bool,
) -> None:
    rows = rows_of(served_bundle, 40)
    expected = client.predict(rows)
    result = triton_client.infer(
        served_bundle.name,
        field_inputs(served_bundle, rows, binary),
        outputs=outputs("score", binary=binary),
        request_id="ranking-7",
    )
    scores = result.as_numpy("score")
    assert scores is not None and scores.shape == (len(rows),)
    np.testing.assert_allclose(scores, expected["scores"], rtol=0, atol=1e-6)
    response = result.get_response()
    assert response["id"] == "ranking-7"
    assert response["model_name"] == served_bundle.name
    assert response["model_version"] == str(served_bundle.version)
    assert expected["unknown_values"]["item"] == 1
    assert response["parameters"]["unknown_values.item"] == 1
    assert response["parameters"]["unknown_values.user"] == 0


def test_tritonclient_defaults_binary_everything_and_fp32_columns(
    triton_client: triton.InferenceServerClient, client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    """No outputs named: the score, in binary as tritonclient asks; [N, 1] FP32 field inputs
    (the synthetic prices have two decimals; 1.5 is exact in FP32)."""
    rows = rows_of(served_bundle, 9)
    result = triton_client.infer(
        served_bundle.name, field_inputs(served_bundle, rows, True, "FP32", column=True)
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["score"]
    assert result.get_output("score")["parameters"]["binary_data_size"] == 4 * len(rows)
    np.testing.assert_allclose(
        result.as_numpy("score"), client.predict(rows)["scores"], rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_graph_tensors_score_and_explain_as_the_bundle_says(
    triton_client: triton.InferenceServerClient,
    client: AFMClient,
    served_bundle: bundles.Bundle,
    binary: bool,
) -> None:
    rows = rows_of(served_bundle, 12)
    names = ["pair_contribution", "score", "raw", "attention", "linear_contribution"]
    result = triton_client.infer(
        served_bundle.name,
        graph_inputs(served_bundle, rows, binary),
        model_version=str(served_bundle.version),
        outputs=outputs(*names, binary=binary),
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == names
    got = {name: result.as_numpy(name) for name in names}
    np.testing.assert_allclose(got["score"], client.predict(rows)["scores"], rtol=0, atol=1e-6)
    pairs, fields = len(served_bundle.pairs), len(served_bundle.encoder.names)
    assert got["attention"].shape == got["pair_contribution"].shape == (len(rows), pairs)
    assert got["linear_contribution"].shape == (len(rows), fields)
    np.testing.assert_allclose(got["attention"].sum(axis=1), 1.0, atol=1e-5)
    total = served_bundle.bias + got["linear_contribution"].sum(1) + got["pair_contribution"].sum(1)
    np.testing.assert_allclose(total, got["raw"], atol=1e-5)
    explained = client.explain(rows[0])
    np.testing.assert_allclose(got["raw"][0], explained["raw"], atol=1e-6)


def test_nested_json_data_and_request_parameters(
    server: Server, client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    """Nested (row by row) data for [N, 1] inputs; `binary_data_output` in the request's
    parameters returns every output in binary unless one says otherwise."""
    rows = rows_of(served_bundle, 3)
    kinds = {f.name: f.kind for f in served_bundle.encoder.fields}
    inputs = [
        {
            "name": name,
            "shape": [len(rows), 1],
            "datatype": "FP64" if kinds[name] in NUMBERS else "BYTES",
            "data": [[row[name]] for row in rows],
        }
        for name in served_bundle.encoder.names
    ]
    request = {
        "id": "nested",
        "parameters": {"binary_data_output": True, "priority": 0},
        "inputs": inputs,
        "outputs": [{"name": "score", "parameters": {"binary_data": False}}, {"name": "raw"}],
    }
    url = f"{server.url}/v2/models/{served_bundle.name}/infer"
    response = httpx.post(url, json=request)
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    header = json.loads(response.content[:length])
    score, raw = header["outputs"]
    np.testing.assert_allclose(score["data"], client.predict(rows)["scores"], atol=1e-6)
    assert raw["parameters"]["binary_data_size"] == 4 * len(rows) and "data" not in raw
    binary_raw = np.frombuffer(response.content[length:], dtype="<f4")
    np.testing.assert_allclose(binary_raw, [client.explain(row)["raw"] for row in rows], atol=1e-6)
    assert len(response.content) == length + 4 * len(rows)
    assert header["id"] == "nested"


def bad_infer(
    triton_client: triton.InferenceServerClient,
    served_bundle: bundles.Bundle,
    inputs: list[triton.InferInput],
    model: str | None = None,
) -> InferenceServerException:
    return refusal(
        lambda: triton_client.infer(model or served_bundle.name, inputs, outputs=outputs("score"))
    )


def test_a_missing_input_is_a_400_naming_it(
    triton_client: triton.InferenceServerClient, served_bundle: bundles.Bundle
) -> None:
    inputs = field_inputs(served_bundle, rows_of(served_bundle, 3), binary=True)
    refused = bad_infer(triton_client, served_bundle, [i for i in inputs if i.name() != "item"])
    assert refused.status() == "400"
    assert "'item' is missing" in str(refused.message())


def test_a_wrong_datatype_is_a_400_naming_the_input(
    triton_client: triton.InferenceServerClient, served_bundle: bundles.Bundle
) -> None:
    inputs = field_inputs(served_bundle, rows_of(served_bundle, 3), binary=False)
    numbers = triton.InferInput("item", [3], "INT64")
    numbers.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int64), binary_data=False)
    inputs = [numbers if i.name() == "item" else i for i in inputs]
    refused = bad_infer(triton_client, served_bundle, inputs)
    assert refused.status() == "400"
    assert "input 'item' is INT64; the categorical field takes BYTES" in str(refused.message())


def test_a_wrong_shape_is_a_400_naming_the_input(
    triton_client: triton.InferenceServerClient, served_bundle: bundles.Bundle
) -> None:
    rows = rows_of(served_bundle, 4)
    inputs = field_inputs(served_bundle, rows, binary=True)
    wide = triton.InferInput("user", [2, 2], "BYTES")
    wide.set_data_from_numpy(np.array([["0", "1"], ["2", "3"]], dtype=np.object_))
    refused = bad_infer(
        triton_client, served_bundle, [wide if i.name() == "user" else i for i in inputs]
    )
    assert refused.status() == "400"
    assert "input 'user' has shape [2, 2]; a field takes [N] or [N, 1]" in str(refused.message())
    short = field_inputs(served_bundle, rows[:3], binary=True)
    mixed = [
        next(s for s in short if s.name() == "item") if i.name() == "item" else i for i in inputs
    ]
    refused = bad_infer(triton_client, served_bundle, mixed)
    assert refused.status() == "400" and "input 'item' has shape [3]" in str(refused.message())


def test_an_unknown_model_or_version_is_a_404(
    triton_client: triton.InferenceServerClient, served_bundle: bundles.Bundle
) -> None:
    inputs = field_inputs(served_bundle, rows_of(served_bundle, 2), binary=True)
    refused = bad_infer(triton_client, served_bundle, inputs, model="no-such-model")
    assert refused.status() == "404" and "'no-such-model'" in str(refused.message())
    refused = refusal(lambda: triton_client.infer(served_bundle.name, inputs, model_version="99"))
    assert refused.status() == "404" and "version '99'" in str(refused.message())


def test_graph_tensors_are_checked_against_the_fields_blocks(
    triton_client: triton.InferenceServerClient, served_bundle: bundles.Bundle
) -> None:
    rows = rows_of(served_bundle, 2)
    inputs = graph_inputs(served_bundle, rows, binary=True)
    encoded = served_bundle.encoder.encode(
        {n: [r[n] for r in rows] for n in served_bundle.encoder.names}
    )
    index = encoded.index.copy()
    index[1, 0] = encoded.index[1, 1]  # the second field's index in the first field's column
    inputs[0].set_data_from_numpy(index)
    refused = bad_infer(triton_client, served_bundle, inputs)
    first = served_bundle.encoder.names[0]
    assert refused.status() == "400"
    assert "feature_index" in str(refused.message()) and repr(first) in str(refused.message())
    alone = bad_infer(triton_client, served_bundle, graph_inputs(served_bundle, rows, True)[:1])
    assert alone.status() == "400" and "'feature_value' is missing" in str(alone.message())
    mixed = graph_inputs(served_bundle, rows, True) + field_inputs(served_bundle, rows, True)[:1]
    refused = bad_infer(triton_client, served_bundle, mixed)
    assert refused.status() == "400" and f"input {first!r}: send the named fields" in str(
        refused.message()
    )


def post_v2(server: Server, name: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/v2/models/{name}/infer", json=body)


def json_request(bundle: bundles.Bundle, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A V2 request in JSON with one input per field, categorical fields first."""
    kinds = {f.name: f.kind for f in bundle.encoder.fields}
    return {
        "inputs": [
            {
                "name": name,
                "shape": [len(rows)],
                "datatype": "FP64" if kinds[name] in NUMBERS else "BYTES",
                "data": [row[name] for row in rows],
            }
            for name in sorted(bundle.encoder.names, key=lambda n: kinds[n] in NUMBERS)
        ]
    }


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: r["inputs"].append({**r["inputs"][0], "name": "colour"}), "'colour'"),
        (lambda r: r["inputs"].append(r["inputs"][0]), "given twice"),
        (lambda r: r["inputs"][-1].update(data=["NaN"]), "'price'"),
        (lambda r: r["inputs"][-1].update(data=[1.5, 2.5]), "'price': shape [1]"),
        (lambda r: r["inputs"][0].update(data=[7]), "BYTES data must be strings"),
        (lambda r: r["inputs"][0].update(data=["x" * 5000]), "at most 1024"),
        (lambda r: r["inputs"][0].update(datatype="STRING"), "not a V2 datatype"),
        (lambda r: r["inputs"][0].pop("data"), "has no data"),
        (lambda r: r.update(outputs=[{"name": "probability"}]), "'probability'"),
        (lambda r: r.update(outputs=[{"name": "score"}] * 2), "asked for twice"),
        (lambda r: r.update(input=[]), "input: unknown field"),
        (lambda r: r.update(inputs=[]), "inputs"),
    ],
    ids=[
        "unknown-input", "repeated-input", "text-for-number", "data-and-shape", "number-for-text",
        "too-long", "unknown-datatype", "no-data", "unknown-output", "repeated-output",
        "unknown-key", "no-inputs",
    ],
)  # fmt: skip
def test_bad_json_requests_are_400s_naming_what_is_wrong(
    server: Server, served_bundle: bundles.Bundle, change: Any, named: str
) -> None:
    request = json_request(served_bundle, rows_of(served_bundle, 1))
    assert post_v2(server, served_bundle.name, request).status_code == 200
    change(request)
    response = post_v2(server, served_bundle.name, request)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"} and named in response.json()["error"]


def test_too_many_rows_is_a_413_and_bad_binary_data_a_400(
    server: Server, served_bundle: bundles.Bundle
) -> None:
    url = f"{server.url}/v2/models/{served_bundle.name}/infer"
    many = json_request(served_bundle, rows_of(served_bundle, 301))
    response = httpx.post(url, json=many)
    first = many["inputs"][0]["name"]
    assert response.status_code == 413 and f"input {first!r}" in response.json()["error"]
    header = (
        b'{"inputs":[{"name":"user","shape":[1],"datatype":"BYTES",'
        b'"parameters":{"binary_data_size":9}}]}'
    )
    length = {"Inference-Header-Content-Length": str(len(header))}
    for tail, problem in (
        (b"\x05\x00\x00\x00ab", "runs past"),
        (b"\x05\x00\x00\x00\xff\xfe\xfd\xfc\xfb", "UTF-8"),
        (b"\x05\x00\x00\x00abcde!", "claims"),
    ):
        response = httpx.post(url, content=header + tail, headers=length)
        assert response.status_code == 400, response.text
        assert problem in response.json()["error"]
    response = httpx.post(url, content=header, headers={"Inference-Header-Content-Length": "999"})
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]
    response = httpx.post(url, content=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    response = httpx.post(url, content=b"{}", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 415 and "gzip" in response.json()["error"]


def request_counts(metrics: str) -> dict[tuple[str, str, str], float]:
    """`afm_requests_total` by (route, method, status)."""
    return {
        (s.labels["route"], s.labels["method"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "afm_requests_total"
    }


def test_v2_requests_are_counted_and_documented(
    server: Server, client: AFMClient, served_bundle: bundles.Bundle
) -> None:
    infer = ("/v2/models/{name}/infer", "POST", "400")
    ready = ("/v2/health/ready", "GET", "200")
    before = request_counts(client.metrics())
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
    assert post_v2(server, served_bundle.name, {"inputs": []}).status_code == 400
    after = request_counts(client.metrics())
    for key in (infer, ready):
        assert after[key] == before.get(key, 0) + 1, key
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{name}",
                 "/v2/models/{name}/ready", "/v2/models/{name}/infer",
                 "/v2/models/{name}/versions/{version}/infer"):  # fmt: skip
        assert path in paths
    body = paths["/v2/models/{name}/infer"]["post"]["requestBody"]["content"]
    assert "inputs" in body["application/json"]["schema"]["properties"]


def test_a_server_without_a_model_is_live_but_not_ready(
    models_dir: Path, tmp_path: Path, served_bundle: bundles.Bundle
) -> None:
    """A bundle that fails verification keeps the server unready: 503 for the server and the
    model, 404 for a model the directory does not hold."""
    models = copy_models(models_dir, tmp_path / "models")
    onnx = bundles.resolve(models, served_bundle.name) / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-16] + b"\0" * 16)
    server = start_server(models, tmp_path, wait_for="/healthz")
    try:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready(served_bundle.name)
        name = served_bundle.name
        for path, status in (
            ("/v2/health/ready", 503),
            (f"/v2/models/{name}/ready", 503),
            (f"/v2/models/{name}", 503),
            ("/v2/models/no-such-model/ready", 404),
        ):
            response = httpx.get(server.url + path)
            assert response.status_code == status, path
            assert set(response.json()) == {"error"}
        inputs = field_inputs(served_bundle, rows_of(served_bundle, 2), binary=True)
        refused = refusal(lambda: client.infer(name, inputs))
        assert refused.status() == "503" and "not loaded yet" in str(refused.message())
        client.close()
    finally:
        server.running.stop()


def test_readiness_drops_while_draining_and_inference_goes_on(
    models_dir: Path, tmp_path: Path, served_bundle: bundles.Bundle
) -> None:
    drain_seconds = 4.0
    server = start_server(
        models_dir, tmp_path, "--workers", "1", AFM_DRAIN_SECONDS=str(drain_seconds)
    )
    try:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        assert client.is_server_ready()
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_seconds
        while client.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503 and "draining" in ready.json()["error"]
        assert client.is_server_live()
        inputs = field_inputs(served_bundle, rows_of(served_bundle, 2), binary=True)
        assert client.infer(served_bundle.name, inputs).as_numpy("score").shape == (2,)
        client.close()
    finally:
        server.running.stop()
