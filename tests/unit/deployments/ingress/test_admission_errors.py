"""Refused admissions as the client sees them (deployments/ingress/admission_errors.py)."""

from __future__ import annotations

import pytest

from deployments.ingress.admission import Rejected
from deployments.ingress.admission_errors import rejection_error


@pytest.mark.parametrize(
    ("rejected", "status", "err_type", "code", "needle"),
    [
        (Rejected(429, "queue_full", 3), 429, "rate_limit_error", "overloaded", "Too many requests for `m`"),
        (Rejected(503, "starting", 3), 503, "service_unavailable_error", "model_starting", "`m` is starting"),
        (Rejected(503, "queue_timeout", 3), 503, "service_unavailable_error", "queue_timeout", "No capacity for `m`"),
    ],
    ids=["queue-full", "starting", "queue-timeout"],
)
def test_rejections_map_to_openai_errors_with_retry_after(
    rejected: Rejected, status: int, err_type: str, code: str, needle: str
):
    err = rejection_error("m", rejected)
    assert (err.status, err.code, err.headers) == (status, code, {"Retry-After": "3"})
    assert err.body()["error"]["type"] == err_type
    assert needle in err.message
    response = err.response()
    assert response.status_code == status and response.headers["retry-after"] == "3"
