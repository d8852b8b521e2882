"""The OpenAPI document, shaped to show the served model's real fields and example requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import BaseRoute

from service.runtime import ModelRuntime, ServedModel


def install_openapi(
    app: FastAPI, runtime: ModelRuntime, documented: Sequence[BaseRoute] = ()
) -> None:
    """OpenAPI that documents the served model's real fields in `/predict` and `/explain`.

    `documented`: FastAPI declarations of routes the app serves by plain Starlette routes (which
    FastAPI does not document), placed first in the document."""
    cache: dict[tuple[str, int] | None, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        model = runtime.model if runtime.ready else None
        key = (model.name, model.version) if model else None
        if key not in cache:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=[*documented, *app.routes],
            )
            if model is not None:
                document_model(schema, model)
            cache.clear()
            cache[key] = schema
        return cache[key]

    app.openapi = openapi  # type: ignore[method-assign]


def document_model(schema: dict[str, Any], model: ServedModel) -> None:
    """Put the model's request schemas and example requests into an OpenAPI document."""
    body, definitions = model.schemas.openapi("#/components/schemas/{model}")
    schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
    schema["info"]["description"] += f" Serving {model.name} version {model.version}."
    context, candidates = example_request(model)
    predict = schema["paths"]["/predict"]["post"]
    predict["requestBody"] = {
        "required": True,
        "content": {
            "application/json": {
                "schema": body,
                "examples": {
                    "ranking": {
                        "summary": "a context and its candidates",
                        "value": {"context": context, "candidates": candidates},
                    },
                    "instances": {
                        "summary": "whole rows, with explanations",
                        "value": {
                            "instances": [{**context, **candidates[0]}],
                            "explain": True,
                            "top_k": 3,
                        },
                    },
                },
            }
        },
    }
    fields = [
        {
            "name": field.name,
            "in": "query",
            "required": True,
            "schema": {"type": "string" if field.kind in ("categorical", "hash") else "number"},
            "example": row[field.name],
            "description": f"{field.kind} field",
        }
        for field in model.encoder.fields
        for row in [{**context, **candidates[0]}]
    ]
    explain = schema["paths"]["/explain"]["get"]
    for parameter in explain.get("parameters", []):
        if parameter["name"] == "top_k":
            parameter["schema"]["maximum"] = model.schemas.num_pairs
    explain["parameters"] = fields + explain.get("parameters", [])


def example_request(model: ServedModel) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A valid ranking request built from each field's most frequent values."""
    card = {f["name"]: f["examples"] for f in model.card()["fields"]}
    item = "item" if "item" in card else model.names[-1]
    context = {name: (examples or [""])[0] for name, examples in card.items() if name != item}
    return context, [{item: value} for value in card[item] or [""]]
