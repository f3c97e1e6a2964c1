"""The ingress hands the engine replica a request that pickles (found by tests/e2e/test_fuzz.py)."""

from __future__ import annotations

import pickle

import pytest

from deployments.ingress.app import Ingress, _materialized, _protocol
from deployments.ingress.errors import ApiError


def test_content_part_iterables_become_lists_that_pickle():
    messages = [{"role": "system", "content": []}, {"role": "user", "content": "hi"}]
    body = {"model": "m", "max_tokens": 3, "messages": messages}
    req = _protocol("chat").model_validate(body)
    with pytest.raises(TypeError):
        pickle.dumps(req)  # pydantic's lazy ValidatorIterator: why the ingress materializes
    assert pickle.loads(pickle.dumps(_materialized(req))).messages[0]["content"] == []


def test_fields_that_crash_vllms_validators_are_client_errors():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "structured_outputs": True}
    with pytest.raises(ApiError) as err:
        Ingress._validate(None, "chat", body)  # type: ignore[arg-type]
    assert err.value.status == 400
