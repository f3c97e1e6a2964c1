"""The ingress's OpenAPI document, with the request bodies its generation routes accept.

The routes read the raw request (to bound its size and give OpenAI-shaped errors for bad JSON), so
FastAPI cannot infer their bodies; this document publishes vLLM's own ``ChatCompletionRequest`` and
``CompletionRequest`` JSON schemas for them, and the OpenAI error body for every error status. Clients
and schema fuzzers (tests/e2e/test_fuzz.py) read it from ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_REF = "#/components/schemas/{model}"
ERROR_STATUSES = ("400", "401", "404", "413", "429", "503", "504")

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "integer", "null"]},
            },
        }
    },
}


def _body_schema(model: type, components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)  # type: ignore[attr-defined]
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def openapi_document(app: FastAPI, bodies: dict[str, type]) -> dict[str, Any]:
    """FastAPI's document for ``app`` plus ``bodies`` (path -> pydantic request model) and error bodies."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = _ERROR_SCHEMA
    error = {
        "description": "OpenAI-style error",
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}},
    }
    for path, model in bodies.items():
        op = doc["paths"][path]["post"]
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(model, components)}},
        }
        op["responses"] = {
            "200": {"description": "The completion (JSON), or server-sent events when `stream` is true"},
            **{status: error for status in ERROR_STATUSES},
        }
    return doc
