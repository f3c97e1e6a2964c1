"""The headers Serve's HTTP proxy takes as its own controls, made safe before the proxy reads them.

Serve's proxy (ray/serve/_private/proxy.py) reads request headers as instructions: ``x-request-id`` becomes
its request id (in its access log, echoed to the client, passed to our replicas), and
``serve_multiplexed_model_id`` steers its routing to ingress replicas. Both come from the client. This
middleware runs in the proxy ahead of Serve's own (``deployments/proxy_callback.py``): it keeps a client's
request id only when it is one short token of safe characters (otherwise Serve makes a fresh one) and drops
the multiplexing header, which this app does not use. ``x-session-id``, which Serve also reads, stays: it is
this app's session-affinity key (the ingress routes a session's turns to one engine replica), and Serve only
keeps the session on one ingress replica with it.

The ingress checks the id again (:func:`request_id`) for a request that reaches it another way."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

# What a client's x-request-id may be: it is logged, echoed to the engines and used in their request ids.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_REQUEST_ID_HEADER = b"x-request-id"
# Serve's routing control that this app does not use, compared as Serve compares it ("-" and "_" alike).
_MULTIPLEXED_MODEL_ID = "serve_multiplexed_model_id"


def request_id(header: str | None) -> str:
    """The client's ``x-request-id`` when it is a short token of safe characters, else a fresh one.

    A client id that could forge log lines (newlines), blow up log volume or collide with the engines'
    own suffixes is replaced, not refused: the id is for correlation, and a request is not wrong for it.
    """
    if header is not None and _REQUEST_ID.fullmatch(header):
        return header
    return uuid.uuid4().hex


def _kept(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` less the multiplexing header, and less every request id unless there is one safe one."""
    ids = [value for name, value in headers if name == _REQUEST_ID_HEADER]
    keep_id = len(ids) == 1 and _REQUEST_ID.fullmatch(ids[0].decode("latin-1")) is not None
    return [
        (name, value)
        for name, value in headers
        if (keep_id or name != _REQUEST_ID_HEADER) and name.decode("latin-1").replace("-", "_") != _MULTIPLEXED_MODEL_ID
    ]


class ClientHeaderGuard:
    """ASGI middleware: the request's headers as :func:`_kept` leaves them, before Serve reads any."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers: list[Any] = list(scope.get("headers", []))
            kept = _kept(headers)
            if len(kept) != len(headers):
                scope = {**scope, "headers": kept}
        await self._app(scope, receive, send)
