"""The ingress's published OpenAPI schema, fuzzed against the running app (schemathesis + hypothesis).

Requests are generated from ``/openapi.json`` (vLLM's request models): valid ones (positive mode) and
ones that break the schema (negative mode), for both generation routes. Whatever comes, the app must
answer without a 5xx, and every 4xx must carry an OpenAI error body. Generation is bounded where the
answer would only cost time (a few output tokens, the served model ids, small ``n``): long outputs and
unknown models have their own tests in test_e2e_serving.py.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.generation import GenerationMode

from tests.e2e.served import Served

pytestmark = pytest.mark.e2e

EXAMPLES_PER_RUN = 130  # x (2 routes x 2 modes + 1 GET route) = 650 requests
ROUTES = {"/v1/chat/completions": "ChatCompletionRequest", "/v1/completions": "CompletionRequest"}
SMALL = {"type": "integer", "minimum": 0, "maximum": 8}


def _bounded(doc: dict[str, Any], models: list[str]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for name in ROUTES.values():
        body = doc["components"]["schemas"][name]
        props = body["properties"]
        props["model"] = {"type": "string", "enum": models}
        for knob in ("max_tokens", "max_completion_tokens", "min_tokens"):
            if knob in props:
                props[knob] = SMALL
        props["n"] = {"type": "integer", "minimum": 1, "maximum": 2}
        body["required"] = sorted({*body.get("required", []), "model", "max_tokens"})
    return doc


def _is_openai_error(resp: Any) -> bool:
    try:
        err = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err) and bool(err["message"])


def test_fuzzed_requests_get_no_5xx_and_openai_errors(served: Served):
    doc = httpx.get(served.base_url + "/openapi.json", timeout=60).json()
    for path, name in ROUTES.items():
        assert doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(name)
    schema = schemathesis.openapi.from_dict(_bounded(doc, [m.id for m in served.config.models]))
    statuses: Counter[int] = Counter()
    bad: list[str] = []

    runs = [(path, "POST", mode) for path in ROUTES for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    runs.append(("/v1/models/{model_id}", "GET", GenerationMode.POSITIVE))  # unknown ids: 404, OpenAI-shaped
    for path, method, mode in runs:

        @settings(
            max_examples=EXAMPLES_PER_RUN,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=schema[path][method].as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            if isinstance(case.body, dict) and not {"max_tokens", "max_completion_tokens"} & case.body.keys():
                # Negative mode drops the bound as it drops any required field, and OpenAI's default is
                # "up to the context": a valid request that on a shared CPU outlasts the 120 s below.
                case.body["max_tokens"] = SMALL["maximum"]
            try:
                resp = case.call(base_url=served.base_url, timeout=120)
            except requests.Timeout:  # a hang is a failure with its whole body (to replay), not an error
                bad.append(f"no answer in 120 s: {case.method} {case.path} {case.body!r:.4000}")
                return
            statuses[resp.status_code] += 1
            if resp.status_code >= 500 or (resp.status_code >= 400 and not _is_openai_error(resp)):
                bad.append(f"{resp.status_code} {case.path} {case.body!r:.300} -> {resp.text[:300]}")

        fuzz()

    print("fuzz statuses:", dict(sorted(statuses.items())))
    assert sum(statuses.values()) >= 500, statuses
    assert statuses[404] > 0, "no unknown model id was asked for"
    assert statuses[200] > 0, "no generated request was valid: the fuzzer never reached the engines"
    assert not bad, "\n".join(bad[:10])
