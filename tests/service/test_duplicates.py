"""Repeated JSON keys in a `/predict` body are a 422 naming each one, compact or pretty JSON."""

from __future__ import annotations

import json

import httpx
import orjson
import pytest

from service.duplicates import refuse_repeated_keys, repeated_keys
from service.errors import ValidationFailed
from tests.service.conftest import CONTEXT, Server

JSON = {"content-type": "application/json"}


def test_repeated_keys_are_named_by_their_path() -> None:
    body = b'{"context": {"user": "0", "user": "1"}, "candidates": [{"item": "1"}, {"item": "2", "item": "3"}]}'
    assert repeated_keys(body) == ["context.user", "candidates[1].item"]
    assert repeated_keys(b'{"a": 1, "a": 2, "a": 3}') == ["a"]
    assert repeated_keys(b'{"a": "x\\": \\"a\\":", "b": 1}') == []


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"instances": [{"a": 1, "b": "x"}], "explain": True}),
        json.dumps({"instances": [{"a": 1, "b": "x"}], "explain": True}, indent=2).encode(),
        b'{"instances": [{"a": 1, "b": "say \\"b\\":"}], "explain": true}',
    ],
)
def test_a_body_without_repeated_keys_passes(body: bytes) -> None:
    refuse_repeated_keys(body, keys=4)


def test_a_repeated_key_is_refused_on_the_fast_path_too() -> None:
    with pytest.raises(ValidationFailed) as refused:
        refuse_repeated_keys(b'{"instances":[{"a":1,"a":2}]}', keys=2)
    assert refused.value.details == [("instances[0].a", "given more than once")]


def test_predict_refuses_a_repeated_key_with_a_422_naming_it(server: Server) -> None:
    candidates = ", ".join(['{"item": "1"}', '{"item": "2", "item": "3"}'])
    body = f'{{"context": {json.dumps(CONTEXT)}, "candidates": [{candidates}]}}'
    for content in (body, body.replace(": ", ":").replace(", ", ",")):
        answer = httpx.post(f"{server.url}/predict", content=content, headers=JSON)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"] == [
            {"field": "candidates[1].item", "problem": "given more than once"}
        ]


def test_predict_accepts_pretty_json_without_repeats(server: Server) -> None:
    body = {"context": CONTEXT, "candidates": [{"item": "1"}, {"item": "2"}], "top_k": 1}
    for content in (json.dumps(body, indent=2).encode(), orjson.dumps(body)):
        answer = httpx.post(f"{server.url}/predict", content=content, headers=JSON)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["scores"]) == 2
