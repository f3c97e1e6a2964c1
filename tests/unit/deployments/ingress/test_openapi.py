"""The ingress's OpenAPI document: generation routes carry vLLM's request schemas, every $ref resolves."""

from __future__ import annotations

import json
import re

from deployments.ingress.app import app
from deployments.ingress.openapi import ERROR_STATUSES


def test_generation_routes_publish_vllm_request_bodies_and_error_bodies():
    doc = app.openapi()
    schemas = doc["components"]["schemas"]
    for path, model in (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest")):
        op = doc["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert "model" in schemas[model]["properties"]
        assert set(ERROR_STATUSES) <= set(op["responses"])
    assert schemas["ChatCompletionRequest"]["required"] == ["messages"]
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(schemas), refs - set(schemas)
    assert "$defs" not in json.dumps(doc)
