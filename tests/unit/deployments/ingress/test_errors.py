"""Error bodies have OpenAI's shape and name what is wrong."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from deployments.ingress.errors import ApiError, error_body, from_validation_error


@pytest.mark.parametrize(
    ("status", "err_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (404, "not_found_error"),
        (503, "service_unavailable_error"),
        (500, "server_error"),
    ],
)
def test_shape(status: int, err_type: str):
    body = error_body(status, "boom", param="x")
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == err_type
    assert body["error"]["message"] == "boom"


def test_validation_error_names_the_field():
    class Req(BaseModel):
        temperature: float

    with pytest.raises(ValidationError) as info:
        Req.model_validate({"temperature": "hot"})
    err = from_validation_error(info.value)
    assert err.status == 400
    assert err.param == "temperature"
    assert "temperature" in err.message


def test_api_error_response_carries_headers():
    resp = ApiError(429, "slow down", headers={"Retry-After": "2"}).response()
    assert resp.status_code == 429
    assert resp.headers["retry-after"] == "2"
