"""A table of bad requests against the real server: each is the documented 4xx naming the field,
never a 5xx, and the server keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest

from tests.service.conftest import API_KEY, CONTEXT, Server

ROW = {**CONTEXT, "item": "1"}
MAX_ROWS = 300
MAX_BODY = 256 * 1024


@dataclass
class Bad:
    """One bad request and the answer it must get."""

    name: str
    status: int
    fields: list[str]
    method: str = "POST"
    path: str = "/predict"
    json: Any = None
    content: bytes | None = None
    params: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False

    def send(self, client: httpx.Client) -> httpx.Response:
        headers = dict(self.headers)
        content: Any = self.content
        if self.json is not None:
            content = orjson.dumps(self.json)
            headers.setdefault("content-type", "application/json")
        if self.chunked and content is not None:
            body = content
            content = iter(body[i : i + 65536] for i in range(0, len(body), 65536))
        return client.request(
            self.method, self.path, content=content, params=self.params, headers=headers
        )


def raw(text: str) -> bytes:
    return text.encode()


def without(row: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != name}


def ranking(price: str) -> bytes:
    context = orjson.dumps(without(CONTEXT, "price")).decode()[:-1]
    return raw(f'{{"context": {context}, "price": {price}}}, "candidates": [{{"item": "1"}}]}}')


JSON = {"content-type": "application/json"}
ADMIN = {"x-api-key": API_KEY}
BAD = [
    Bad("missing field", 422, ["instances[0].price"], json={"instances": [without(ROW, "price")]}),
    Bad(
        "unknown field",
        422,
        ["instances[1].colour"],
        json={"instances": [ROW, {**ROW, "colour": "red"}]},
    ),
    Bad(
        "null categorical", 422, ["instances[0].user"], json={"instances": [{**ROW, "user": None}]}
    ),
    Bad(
        "null numeric",
        422,
        ["context.price"],
        json={"context": {**CONTEXT, "price": None}, "candidates": [{"item": "1"}]},
    ),
    Bad(
        "number for a categorical",
        422,
        ["instances[0].user"],
        json={"instances": [{**ROW, "user": 42}]},
    ),
    Bad(
        "string for a numeric",
        422,
        ["instances[0].price"],
        json={"instances": [{**ROW, "price": "1.5"}]},
    ),
    Bad(
        "boolean for a numeric",
        422,
        ["instances[0].price"],
        json={"instances": [{**ROW, "price": True}]},
    ),
    Bad(
        "object for a categorical",
        422,
        ["candidates[0].item"],
        json={"context": CONTEXT, "candidates": [{"item": {"id": 1}}]},
    ),
    Bad("NaN number", 422, ["context.price"], content=ranking("NaN"), headers=JSON),
    Bad("Infinity number", 422, ["context.price"], content=ranking("Infinity"), headers=JSON),
    Bad("-Infinity number", 422, ["context.price"], content=ranking("-Infinity"), headers=JSON),
    Bad(
        "number overflowing to infinity",
        422,
        ["context.price"],
        content=ranking("1e400"),
        headers=JSON,
    ),
    Bad(
        "field in neither context nor candidate",
        422,
        ["candidates[3].item"],
        json={"context": CONTEXT, "candidates": [{"item": "1"}] * 3 + [{}]},
    ),
    Bad(
        "field in both context and candidate",
        422,
        ["candidates[0].user"],
        json={"context": CONTEXT, "candidates": [{"item": "1", "user": "2"}]},
    ),
    Bad(
        "unknown field in a candidate",
        422,
        ["candidates[1].colour"],
        json={"context": CONTEXT, "candidates": [{"item": "1"}, {"item": "2", "colour": "red"}]},
    ),
    Bad(
        "unknown field in the context",
        422,
        ["context.colour"],
        json={"context": {**CONTEXT, "colour": "red"}, "candidates": [{"item": "1"}]},
    ),
    Bad("empty candidate list", 422, ["candidates"], json={"context": CONTEXT, "candidates": []}),
    Bad("empty instance list", 422, ["instances"], json={"instances": []}),
    Bad(
        "too many candidates",
        413,
        ["candidates"],
        json={"context": CONTEXT, "candidates": [{"item": "1"}] * (MAX_ROWS + 1)},
    ),
    Bad("too many instances", 413, ["instances"], json={"instances": [ROW] * (MAX_ROWS + 1)}),
    Bad(
        "huge body",
        413,
        ["body"],
        content=orjson.dumps({"instances": [ROW]}) + b" " * MAX_BODY,
        headers=JSON,
    ),
    Bad(
        "huge chunked body",
        413,
        ["body"],
        content=orjson.dumps({"instances": [ROW]}) + b" " * MAX_BODY,
        headers=JSON,
        chunked=True,
    ),
    Bad("not JSON", 400, [], content=b"user=0&item=1", headers=JSON),
    Bad("truncated JSON", 400, [], content=orjson.dumps({"instances": [ROW]})[:-3], headers=JSON),
    Bad("invalid UTF-8", 400, [], content=b'{"instances": [{"user": "\xff\xfe"}]}', headers=JSON),
    Bad("empty body", 400, [], content=b"", headers=JSON),
    Bad(
        "wrong content type",
        415,
        ["content-type"],
        content=orjson.dumps({"instances": [ROW]}),
        headers={"content-type": "text/plain"},
    ),
    Bad("no content type", 415, ["content-type"], content=orjson.dumps({"instances": [ROW]})),
    Bad(
        "form instead of JSON",
        415,
        ["content-type"],
        content=b"user=0",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Bad("body is a list", 422, ["body"], json=[ROW]),
    Bad("body is a string", 422, ["body"], json="hello"),
    Bad("no rows at all", 422, ["context", "candidates"], json={}),
    Bad("both shapes at once", 422, ["context"], json={"instances": [ROW], "context": CONTEXT}),
    Bad(
        "very long categorical value",
        422,
        ["instances[0].user"],
        json={"instances": [{**ROW, "user": "u" * 5000}]},
    ),
    Bad("negative top_k", 422, ["top_k"], json={"instances": [ROW], "explain": True, "top_k": -1}),
    Bad("zero top_k", 422, ["top_k"], json={"instances": [ROW], "explain": True, "top_k": 0}),
    Bad("huge top_k", 422, ["top_k"], json={"instances": [ROW], "explain": True, "top_k": 10**12}),
    Bad(
        "top_k as a string",
        422,
        ["top_k"],
        json={"instances": [ROW], "explain": True, "top_k": "3"},
    ),
    Bad("explain as a string", 422, ["explain"], json={"instances": [ROW], "explain": "yes"}),
    Bad("unknown option", 422, ["explain_all"], json={"instances": [ROW], "explain_all": True}),
    Bad(
        "explain missing a field",
        422,
        ["price"],
        method="GET",
        path="/explain",
        params=without(ROW, "price"),
    ),
    Bad(
        "explain unknown field",
        422,
        ["colour"],
        method="GET",
        path="/explain",
        params={**ROW, "colour": "red"},
    ),
    Bad(
        "explain NaN number",
        422,
        ["price"],
        method="GET",
        path="/explain",
        params={**ROW, "price": "nan"},
    ),
    Bad(
        "explain text for a number",
        422,
        ["price"],
        method="GET",
        path="/explain",
        params={**ROW, "price": "cheap"},
    ),
    Bad(
        "explain repeated field",
        422,
        ["user"],
        method="GET",
        path="/explain",
        params=[*ROW.items(), ("user", "2")],
    ),
    Bad(
        "explain negative top_k",
        422,
        ["top_k"],
        method="GET",
        path="/explain",
        params={**ROW, "top_k": -3},
    ),
    Bad(
        "explain huge top_k",
        422,
        ["top_k"],
        method="GET",
        path="/explain",
        params={**ROW, "top_k": 10**9},
    ),
    Bad(
        "explain top_k not a number",
        422,
        ["top_k"],
        method="GET",
        path="/explain",
        params={**ROW, "top_k": "all"},
    ),
    Bad(
        "explain very long value",
        422,
        ["city"],
        method="GET",
        path="/explain",
        params={**ROW, "city": "c" * 2000},
    ),
    Bad(
        "reload unknown version",
        404,
        ["version"],
        path="/admin/reload",
        json={"version": 99},
        headers=ADMIN,
    ),
    Bad(
        "reload unknown model",
        404,
        ["name"],
        path="/admin/reload",
        json={"name": "no-such-model"},
        headers=ADMIN,
    ),
    Bad(
        "reload version not a number",
        422,
        ["version"],
        path="/admin/reload",
        json={"version": "latest"},
        headers=ADMIN,
    ),
    Bad("reload without a key", 401, ["x-api-key"], path="/admin/reload", json={}),
    Bad(
        "reload with a wrong key",
        401,
        ["x-api-key"],
        path="/admin/reload",
        json={},
        headers={"x-api-key": "nope"},
    ),
    Bad("unknown route", 404, [], method="GET", path="/predictions"),
    Bad("wrong method", 405, [], method="GET", path="/predict"),
]


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.mark.parametrize("bad", BAD, ids=[b.name for b in BAD])
def test_bad_request_gets_documented_4xx_naming_the_field(
    bad: Bad, http: httpx.Client, server: Server
) -> None:
    response = bad.send(http)
    assert response.status_code == bad.status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["message"]
    named = [detail["field"] for detail in error["details"]]
    for name in bad.fields:
        assert name in named, (name, error)
    assert server.process.poll() is None
    assert http.get("/healthz").status_code == 200


def test_table_covers_at_least_twenty_cases() -> None:
    assert len(BAD) >= 20
    assert {b.status for b in BAD} >= {400, 401, 404, 405, 413, 415, 422}


def test_server_keeps_serving_after_the_bad_requests(http: httpx.Client, server: Server) -> None:
    for bad in BAD:
        assert bad.send(http).status_code < 500
    assert server.process.poll() is None
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    good = http.post("/predict", json={"context": CONTEXT, "candidates": [{"item": "1"}]})
    assert good.status_code == 200
    assert len(good.json()["scores"]) == 1


def test_error_problems_say_what_is_wrong(http: httpx.Client) -> None:
    body = {"instances": [{**without(ROW, "price"), "user": None, "colour": "red"}]}
    details = http.post("/predict", json=body).json()["error"]["details"]
    problems = {d["field"]: d["problem"] for d in details}
    assert problems["instances[0].price"] == "missing"
    assert problems["instances[0].colour"] == "unknown field"
    assert problems["instances[0].user"].startswith("null")


def test_a_body_of_neither_shape_is_told_both(http: httpx.Client) -> None:
    error = http.post("/predict", json={"rows": [ROW]}).json()["error"]
    assert "send `instances` (whole rows), or a `context` and its `candidates`" in error["message"]
    assert {d["field"]: d["problem"] for d in error["details"]}["rows"] == "unknown field"
    error = http.post("/predict", json={"context": CONTEXT}).json()["error"]  # one shape, half
    assert error["message"] == "the request does not match the model's fields"
