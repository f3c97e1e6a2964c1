"""Request checks (deployments/ingress/validation.py): bad input is the client's 400, and the request pickles.

The pickling case was found by tests/e2e/test_fuzz.py.
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Any

import pytest
from starlette.requests import Request

from config.front import MediaConfig, RequestLimits
from deployments.ingress.errors import ApiError
from deployments.ingress.validation import (
    ENGINE_ONLY_FIELDS,
    MAX_JSON_DEPTH,
    ValidatedRequest,
    materialized,
    parse_json,
    protocol,
    read_json_body,
    requested_model,
    sequences,
    unknown_model,
    validated_request,
)
from deployments.proxy_body import BODY_SCOPE_KEY

LIMITS = RequestLimits(max_n=4, max_prompts=3, max_output_tokens=1000)
MAX_MODEL_LEN = 200
TEXT_ONLY = MediaConfig()


def _request(body: bytes, headers: dict[str, str] | None = None) -> Request:
    """A Starlette request whose body arrives in two chunks."""
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]

    async def receive() -> dict:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "headers": raw_headers}, receive)


def _status(call) -> tuple[int, str | None]:
    with pytest.raises(ApiError) as err:
        call()
    return err.value.status, err.value.code


def _validated(kind: str, body: dict, **options: Any) -> Any:
    """The parsed request alone (:func:`_checked` takes the same ``options``)."""
    return _checked(kind, body, **options).request


def _checked(
    kind: str,
    body: dict,
    max_messages: int = 8,
    template_inputs: frozenset[str] = frozenset(),
    media: MediaConfig = TEXT_ONLY,
    limits: RequestLimits = LIMITS,
) -> ValidatedRequest:
    return validated_request(
        kind,
        body,
        max_messages=max_messages,
        template_inputs=template_inputs,
        limits=limits,
        max_model_len=MAX_MODEL_LEN,
        media=media,
    )


def test_content_part_iterables_become_lists_that_pickle():
    messages = [{"role": "system", "content": []}, {"role": "user", "content": "hi"}]
    body = {"model": "m", "max_tokens": 3, "messages": messages}
    req = protocol("chat").model_validate(body)
    with pytest.raises(TypeError):
        pickle.dumps(req)  # pydantic's lazy ValidatorIterator: why the ingress materializes
    assert pickle.loads(pickle.dumps(materialized(req))).messages[0]["content"] == []


def test_fields_that_crash_vllms_validators_are_client_errors():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "structured_outputs": True}
    assert _status(lambda: _validated("chat", body)) == (400, None)


def test_bad_roles_and_empty_messages_are_refused_before_vllm():
    assert _status(lambda: _validated("chat", {"model": "m", "messages": []})) == (400, "invalid_messages")
    wizard = {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}
    assert _status(lambda: _validated("chat", wizard)) == (400, "invalid_role")
    for role in ([-638, None, {}], {"a": 1}, 3, None):  # the fuzzer's unhashable and non-string roles: no 500
        odd = {"model": "m", "messages": [{"role": role, "content": "x"}]}
        assert _status(lambda odd=odd: _validated("chat", odd)) == (400, "invalid_role"), role


def test_too_many_messages_is_400():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}] * 9}
    assert _status(lambda: _validated("chat", body, max_messages=8)) == (400, "too_many_messages")
    assert _validated("chat", {**body, "messages": body["messages"][:8]}, max_messages=8).messages


@pytest.mark.parametrize(
    "extra",
    [{"chat_template": "{{ 7 * 7 }}"}, {"chat_template_kwargs": {"chat_template": "{{ 7 * 7 }}"}}],
    ids=["field", "kwarg"],
)
def test_a_clients_own_chat_template_is_400(extra: dict):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
    assert _status(lambda: _validated("chat", body)) == (400, "chat_template_not_allowed")


def test_chat_template_kwargs_keep_only_what_the_template_reads():
    kwargs = {"enable_thinking": True, "padding": "max_length", "max_length": 10**9, "tokenize": False}
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": kwargs}
    req = _validated("chat", body, template_inputs=frozenset({"enable_thinking"}))
    assert req.chat_template_kwargs == {"enable_thinking": True}


def test_client_engine_only_fields_are_dropped():
    extra = {
        "kv_transfer_params": {"prompt_token_ids": [1, 2]},
        "ec_transfer_params": {"do_remote_decode": True},
        "vllm_xargs": {"plugin_knob": 1},
    }
    assert set(extra) == set(ENGINE_ONLY_FIELDS)
    req = _validated("completions", {"model": "m", "prompt": "hi", **extra})
    assert req.prompt == "hi"
    assert all(getattr(req, name) is None for name in ENGINE_ONLY_FIELDS)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"n": 5, "max_tokens": 10}, "n_too_large"),
        ({"prompt": ["a", "b", "c", "d"], "max_tokens": 10}, "too_many_prompts"),
        ({"prompt": [[1, 2], [3], [4], [5]], "max_tokens": 10}, "too_many_prompts"),
        ({"use_beam_search": True, "max_tokens": 10}, "beam_search_off"),
        ({"prompt": ["a", "b", "c"], "n": 4, "max_tokens": 100}, "output_budget_exceeded"),  # 1,200 > 1,000
    ],
    ids=["n", "batch", "token-batch", "beam", "budget"],
)
def test_costly_requests_are_400_naming_the_limit(extra: dict, code: str):
    body = {"model": "m", "prompt": "hi", **extra}
    assert _status(lambda: _validated("completions", body)) == (400, code)


def test_requests_within_the_limits_pass():
    assert _validated("completions", {"model": "m", "prompt": ["a", "b"], "n": 4, "max_tokens": 125}).n == 4
    assert _validated("completions", {"model": "m", "prompt": [1, 2, 3], "n": 4}).n == 4  # vLLM's default 16 tokens
    # One whole context is always allowed, whatever max_output_tokens says; a chat without max_tokens asks for one.
    assert _validated("chat", {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 4}).n == 4
    tiny = LIMITS.model_copy(update={"max_output_tokens": 1})
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": MAX_MODEL_LEN}
    req = _validated("chat", chat, limits=tiny)
    assert req.max_completion_tokens == MAX_MODEL_LEN
    chat["max_completion_tokens"] = MAX_MODEL_LEN + 1
    with pytest.raises(ApiError):
        _validated("chat", chat, limits=tiny)


def test_a_requests_token_bound_covers_its_prompt_and_every_sequences_output():
    batch = _checked("completions", {"model": "m", "prompt": ["héllo", "ab"], "n": 2, "max_tokens": 10})
    assert sequences(batch.request) == 4
    assert batch.token_bound == (6 + 2) + 8 + 4 * 10  # UTF-8 bytes, template; 2 x 2 x 10
    ids = _checked("completions", {"model": "m", "prompt": [5, 6, 7], "max_tokens": 10})
    assert ids.token_bound == 3 + 8 + 10  # a token an id
    chat = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "abc"}]}]}
    assert _checked("chat", chat).token_bound == len("user") + len("text") + len("abc") + 2 * 8 + MAX_MODEL_LEN
    image = _image_chat("data:image/png;base64," + "A" * 10_000)
    media = MediaConfig(enabled=True)
    text = _checked("chat", dict(image), media=MediaConfig(enabled=True, tokens_per_item=1)).token_bound
    # The data: URL's 10,000 bytes are not tokens; the image is its configured encoder tokens, reserved up front.
    assert text < 100 + MAX_MODEL_LEN
    assert _checked("chat", dict(image), media=media).token_bound == text - 1 + media.tokens_per_item


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"\xff\xfe{}", "invalid_encoding"), (b"{not json", "invalid_json"), (b"[1]", "invalid_json")],
)
def test_bodies_that_are_not_a_json_object(raw: bytes, code: str):
    assert _status(lambda: parse_json(raw)) == (400, code)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,  # the parser's own RecursionError
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # valid, deeper than the parser can go
        b'{"a": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",  # parses; one level over the limit
    ],
    ids=["unclosed-bomb", "closed-bomb", "one-over"],
)
def test_nesting_bombs_are_400(raw: bytes):
    assert _status(lambda: parse_json(raw)) == (400, "invalid_json")


def test_nesting_up_to_the_limit_is_accepted():
    raw = b'{"a": ' + b"[" * (MAX_JSON_DEPTH - 1) + b"]" * (MAX_JSON_DEPTH - 1) + b"}"
    assert parse_json(raw)["a"] is not None


def test_nan_is_not_json():
    assert _status(lambda: parse_json(b'{"temperature": NaN}')) == (400, "invalid_json")


def test_a_body_that_never_finishes_is_408():
    async def receive() -> dict:
        if not sent:
            sent.append(1)
            return {"type": "http.request", "body": b'{"model": ', "more_body": True}
        await asyncio.Event().wait()  # the rest never comes
        return {}

    sent: list[int] = []
    stalled = Request({"type": "http", "method": "POST", "headers": []}, receive)
    assert _status(lambda: asyncio.run(read_json_body(stalled, limit=1000, timeout_s=0.05))) == (408, "body_timeout")


def test_body_size_limit_by_declared_length_and_by_stream():
    body = b'{"model": "' + b"x" * 100 + b'"}'
    assert asyncio.run(read_json_body(_request(body), limit=len(body), timeout_s=10)) == {"model": "x" * 100}
    declared = _request(body, {"content-length": str(len(body))})
    assert _status(lambda: asyncio.run(read_json_body(declared, limit=10, timeout_s=10))) == (413, "body_too_large")
    streamed = _request(body)
    assert _status(lambda: asyncio.run(read_json_body(streamed, limit=10, timeout_s=10))) == (413, "body_too_large")


def test_a_body_the_proxy_carried_is_read_from_the_request_not_fetched():
    async def receive() -> dict:
        raise AssertionError("a carried body is not fetched again")

    body = b'{"model": "m"}'
    carried = Request({"type": "http", "method": "POST", "headers": [], BODY_SCOPE_KEY: body}, receive)
    assert asyncio.run(read_json_body(carried, limit=len(body), timeout_s=10)) == {"model": "m"}
    too_large = Request({"type": "http", "method": "POST", "headers": [], BODY_SCOPE_KEY: body}, receive)
    assert _status(lambda: asyncio.run(read_json_body(too_large, limit=5, timeout_s=10))) == (413, "body_too_large")


def test_model_must_be_named_and_served():
    assert _status(lambda: requested_model({"model": ""})) == (400, "missing_model")
    assert requested_model({"model": "m"}) == "m"
    err = unknown_model("nope", {"b": 1, "a": 2})
    assert (err.status, err.code, err.param) == (404, "model_not_found", "model")
    assert "['a', 'b']" in err.message


def _image_chat(url: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "what is this?"}]
    return {"model": "m", "messages": [{"role": "user", "content": parts}]}


DATA_URL = "data:image/png;base64,iVBORw0KGgo="


def test_media_is_refused_when_off_naming_the_option():
    with pytest.raises(ApiError) as err:
        _validated("chat", _image_chat(DATA_URL))
    assert (err.value.status, err.value.code) == (400, "media_not_allowed")
    assert "ingress.media.enabled" in err.value.message and err.value.param == "messages.0.content.0"
    audio = {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}
    assert _status(lambda: _validated("chat", audio)) == (400, "media_not_allowed")
    text_parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
    assert _validated("chat", text_parts).messages
    listed = {"model": "m", "messages": [{"role": "user", "content": [{"type": ["text"], "text": "hi"}]}]}
    assert _status(lambda: _validated("chat", listed)) == (400, "media_not_allowed")  # an unhashable type: no 500


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        (DATA_URL, True),
        ("https://img.example.com/a.png", True),
        ("https://example.com/a.png", True),
        ("http://example.com/a.png", False),  # not https
        ("https://169.254.169.254/latest/meta-data/", False),  # the instance metadata service
        ("https://example.com.evil.net/a.png", False),
        ("https://evilexample.com/a.png", False),
        ("file:///etc/passwd", False),
        ("https://[::1/a.png", False),  # malformed: a 400, not the parser's ValueError
    ],
)
def test_media_urls_only_on_allowed_domains(url: str, ok: bool):
    media = MediaConfig(enabled=True, allowed_domains=["example.com"])
    if ok:
        assert _validated("chat", _image_chat(url), media=media).messages
    else:
        assert _status(lambda: _validated("chat", _image_chat(url), media=media)) == (400, "media_url_not_allowed")


def test_with_no_allowed_domains_only_data_urls_pass():
    media = MediaConfig(enabled=True)
    assert _validated("chat", _image_chat(DATA_URL), media=media).messages
    assert _status(lambda: _validated("chat", _image_chat("https://example.com/a.png"), media=media)) == (
        400,
        "media_url_not_allowed",
    )


def test_text_over_the_limit_is_400_before_parsing_for_chats_and_completions():
    limits = LIMITS.model_copy(update={"max_text_bytes": 1024})
    chat = {"model": "m", "messages": [{"role": "user", "content": "é" * 510}]}  # 1,020 bytes + the role: at it
    assert _validated("chat", chat, limits=limits).messages
    chat["messages"].append({"role": "user", "content": "x"})
    assert _status(lambda: _validated("chat", chat, limits=limits)) == (400, "text_too_long")
    batch = {"model": "m", "prompt": ["x" * 600, "y" * 600], "max_tokens": 1}  # counted over the batch
    assert _status(lambda: _validated("completions", batch, limits=limits)) == (400, "text_too_long")
    ids = {"model": "m", "prompt": list(range(1025)), "max_tokens": 1}  # a token id counts one
    assert _status(lambda: _validated("completions", ids, limits=limits)) == (400, "text_too_long")
