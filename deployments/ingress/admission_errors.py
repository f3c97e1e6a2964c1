"""How a refused admission reads to the client: an OpenAI error with ``Retry-After``.

:mod:`deployments.ingress.admission` decides (pure asyncio, no HTTP); this module words its
:class:`Rejected` for the client, telling an overloaded model (429) from one still starting or one
with no capacity free in time (503), so clients and load balancers back off or retry accordingly.
"""

from __future__ import annotations

from deployments.ingress.admission import Rejected
from deployments.ingress.errors import ApiError


def rejection_error(model_id: str, rej: Rejected) -> ApiError:
    """The error a request for ``model_id`` refused with ``rej`` is answered with."""
    headers = {"Retry-After": str(rej.retry_after_s)}
    if rej.status == 429:
        return ApiError(
            429,
            f"Too many requests for `{model_id}` right now; retry later.",
            code="overloaded",
            headers=headers,
        )
    if rej.reason == "starting":
        return ApiError(
            503,
            f"`{model_id}` is starting (no replica running yet) and its queue is full; retry later.",
            code="model_starting",
            headers=headers,
        )
    return ApiError(
        503,
        f"No capacity for `{model_id}` became free in time; retry later.",
        code="queue_timeout",
        headers=headers,
    )
