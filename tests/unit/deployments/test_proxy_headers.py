"""The client headers Serve's proxy would take as its own controls, through the middleware that guards them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.serve._private.http_util import _apply_middlewares
from starlette.middleware import Middleware

from deployments.proxy_callback import proxy_middlewares
from deployments.proxy_headers import ClientHeaderGuard, request_id

SAFE_ID = "abc-123_x.y:z"


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        (SAFE_ID, True),
        ("a" * 128, True),
        (None, False),
        ("", False),
        ("a" * 129, False),
        ("id\nforged log line", False),
        ("<script>", False),
    ],
)
def test_client_request_ids_are_kept_only_when_short_and_safe(header: str | None, kept: bool):
    rid = request_id(header)
    assert (rid == header) is kept
    assert 1 <= len(rid) <= 128 and "\n" not in rid


def _seen_by_serve(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The headers the proxy's app sees behind Serve's own middleware and ours, stacked as Serve stacks them."""
    seen: list[tuple[bytes, bytes]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.extend(scope["headers"])

    stacked = _apply_middlewares(app, proxy_middlewares())
    asyncio.run(stacked({"type": "http", "headers": headers}, None, None))
    return seen


def _ids(headers: list[tuple[bytes, bytes]]) -> list[str]:
    return [v.decode() for k, v in headers if k == b"x-request-id"]


def test_a_safe_client_request_id_reaches_serve_unchanged():
    assert _ids(_seen_by_serve([(b"x-request-id", SAFE_ID.encode())])) == [SAFE_ID]


@pytest.mark.parametrize(
    "ids",
    [[b"id-" + b"A" * 600], [b"forged\r\nline"], [b"<script>"], [b"one", b"two"], [b"ok", b"bad id"]],
)
def test_serve_makes_a_fresh_request_id_for_any_other(ids: list[bytes]):
    seen = _ids(_seen_by_serve([(b"x-request-id", v) for v in ids]))
    assert len(seen) == 1 and seen[0].encode() not in ids
    assert request_id(seen[0]) == seen[0]  # Serve's fresh id is itself a safe one


@pytest.mark.parametrize("name", [b"serve_multiplexed_model_id", b"serve-multiplexed-model-id"])
def test_serves_multiplexing_header_never_comes_from_the_client(name: bytes):
    seen = _seen_by_serve([(name, b"steer"), (b"authorization", b"Bearer k")])
    assert (name, b"steer") not in seen
    assert (b"authorization", b"Bearer k") in seen


def test_the_session_header_reaches_the_app():
    """The app's session affinity reads ``x-session-id`` (deployments/ingress/app.py)."""
    assert (b"x-session-id", b"chat-1") in _seen_by_serve([(b"x-session-id", b"chat-1")])


def test_other_scopes_pass_through():
    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)

    scope = {"type": "lifespan"}
    asyncio.run(ClientHeaderGuard(app)(scope, None, None))
    assert seen == [scope]


def test_the_callback_gives_serve_starlette_middlewares():
    assert all(isinstance(m, Middleware) for m in proxy_middlewares())
