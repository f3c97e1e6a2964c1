"""The proxy's body read-ahead: a small body that is all there rides in the scope, anything else streams as before."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from deployments.proxy_body import BODY_SCOPE_KEY, READ_AHEAD_BYTES, BodyAhead, carried_body

BODY = b'{"model": "m", "messages": []}'


def _scope(length: int | None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http", "method": "POST", "headers": headers}


def _through(scope: dict[str, Any], messages: list[dict[str, Any]], stall: bool = False) -> tuple[Any, list[Any]]:
    """What the app behind the middleware sees: the body carried in its scope, and every message it receives.

    ``stall``: after ``messages`` the client sends nothing (until the app has read what came).
    """
    queue = list(messages)
    seen: list[Any] = []
    carried: list[Any] = []

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        carried.append(carried_body(scope))
        for _ in range(len(messages)):
            seen.append(await receive())

    asyncio.run(BodyAhead(app)(scope, receive, None))
    return carried[0], seen


def _chunks(*parts: bytes) -> list[dict[str, Any]]:
    return [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]


def test_a_whole_small_body_is_carried_not_sent_again():
    messages = _chunks(BODY[:10], BODY[10:])
    carried, seen = _through(_scope(len(BODY)), messages)
    assert carried == BODY
    assert seen == [{"type": "http.disconnect"}] * len(messages)  # Serve's receive has only what follows the body


@pytest.mark.parametrize(
    ("length", "messages", "stall"),
    [
        (None, _chunks(BODY), False),  # chunked: no declared length
        (READ_AHEAD_BYTES + 1, _chunks(BODY), False),  # declared larger than the proxy carries
        (len(BODY), _chunks(BODY[:10]), True),  # a slow client: the rest is not there in time
        (len(BODY) + 5, _chunks(BODY), False),  # shorter than declared
        (len(BODY) - 5, _chunks(BODY), False),  # longer than declared
        (len(BODY), [{"type": "http.disconnect"}], False),  # the client left
    ],
    ids=["chunked", "large", "slow", "short", "long", "disconnect"],
)
def test_anything_else_streams_as_before(length: int | None, messages: list[dict[str, Any]], stall: bool):
    carried, seen = _through(_scope(length), messages, stall)
    assert carried is None
    assert seen == messages


def test_other_scopes_pass_through():
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "websocket", "headers": [(b"content-length", b"3")]}
    asyncio.run(BodyAhead(app)(scope, None, None))
    assert seen == [scope]


@pytest.mark.parametrize(("length", "carried"), [(None, None), (len(BODY), BODY)], ids=["streamed", "carried"])
def test_a_client_cannot_set_the_key_through_headers(length: int | None, carried: bytes | None):
    """What the app behind the proxy sees as the carried body is what the proxy read, never a header's value."""
    scope = _scope(length)
    scope["headers"].append((BODY_SCOPE_KEY.encode(), b"forged"))
    assert _through(scope, _chunks(BODY))[0] == carried
