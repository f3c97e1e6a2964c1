"""A small request body read in Serve's HTTP proxy and carried to the ingress inside the request itself.

Serve's proxy sends an ingress replica only the request's ASGI scope; the replica then fetches the body
with a call back to the proxy actor (``ASGIReceiveProxy`` in ray/serve/_private/http_util.py, the proxy's
``receive_asgi_messages``): a second Ray round trip before the ingress has a byte of the prompt, ~3 ms of
every request's time to first token on a 2-core machine (docs/benchmarks.md, "Where a request's first
token waits"). This middleware runs in the proxy (``deployments/proxy_callback.py``): when a body of
declared length up to :data:`READ_AHEAD_BYTES` has all arrived within :data:`READ_AHEAD_S` of its
headers (a chat request sent in one write does), it puts the bytes in the scope under
:data:`BODY_SCOPE_KEY`, and Serve pickles them into the call that starts the request. The ingress takes
them from there (:func:`carried_body`).

Anything else goes the usual way, where the ingress's own size limit and body deadline govern it: a
larger or chunked body, one still arriving (a slow client holds the proxy for at most READ_AHEAD_S, then
streams on), a client that disconnects: the messages read are then replayed to Serve as they came. A
carried body is not replayed: Serve would send it to the replica a second time, in the very call this
saves the ingress from waiting on, and its reply would compete with the request's routing for the
ingress's event loop (measured: the gain was gone). Serve's receive then gives the replica only what
follows the body (the client leaving). A client cannot set the key: scope keys come from the proxy, never
from the request's headers or body.
"""

from __future__ import annotations

import asyncio
from collections import deque

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_SCOPE_KEY = "dflash_serve.body"
# A chat request with a long conversation is tens of KB; a body this large is carried, larger ones stream.
READ_AHEAD_BYTES = 1 << 20
# How long the proxy waits for a body to be complete before it sends the request on without it: long enough
# for a body written with its headers, short next to anything a client sees.
READ_AHEAD_S = 0.05


def carried_body(scope: Scope) -> bytes | None:
    """The body the proxy carried in ``scope``, or None when it did not (read it from the request)."""
    body = scope.get(BODY_SCOPE_KEY)
    return body if isinstance(body, bytes) else None


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _read_ahead(receive: Receive, read: list[Message], declared: int) -> bytes | None:
    """The whole body when it arrives within READ_AHEAD_S and matches ``declared``; every message read is in ``read``.

    Cancelling a pending receive loses nothing: the server keeps what arrives for the next call.
    """
    size = 0
    try:
        async with asyncio.timeout(READ_AHEAD_S):
            while True:
                message = await receive()
                read.append(message)
                if message["type"] != "http.request":
                    return None  # the client left
                size += len(message.get("body", b""))
                if size > declared:
                    return None
                if not message.get("more_body", False):
                    return b"".join(m.get("body", b"") for m in read) if size == declared else None
    except TimeoutError:
        return None


class BodyAhead:
    """ASGI middleware: a complete small body in the scope (:data:`BODY_SCOPE_KEY`), else its messages replayed."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _declared_length(scope) if scope["type"] == "http" else None
        if declared is None or declared > READ_AHEAD_BYTES:
            await self._app(scope, receive, send)
            return
        read: list[Message] = []
        body = await _read_ahead(receive, read, declared)
        pending = deque(read if body is None else ())

        async def replay() -> Message:
            return pending.popleft() if pending else await receive()

        if body is not None:
            scope = {**scope, BODY_SCOPE_KEY: body}
        await self._app(scope, replay, send)
