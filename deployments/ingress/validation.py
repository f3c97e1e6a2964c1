"""What the ingress checks before a generation request goes anywhere: size, JSON, model, messages, schema.

Every check raises :class:`ApiError` with the client's 4xx, so a malformed request is answered at the
front and never reaches (or fails in) an engine replica. The schema is vLLM's own protocol models,
so the ingress accepts exactly what ``vllm serve`` accepts; the result is the vLLM request object the
engine replica is handed, made picklable.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request

from config.front import MediaConfig, RequestLimits
from deployments.ingress.errors import ApiError, from_validation_error
from deployments.proxy_body import carried_body

logger = logging.getLogger(__name__)

ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}  # request kind -> route
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


async def read_json_body(request: Request, limit: int, timeout_s: float) -> dict[str, Any]:
    """The request's JSON object, refused with 413 as soon as it is known to exceed ``limit`` bytes, and
    with 408 when it has not all arrived ``timeout_s`` after the headers.

    The declared length is checked first and the stream is counted as it arrives, so an oversized
    body is never held in memory whole; the deadline frees the connection of a client that sends a
    body slowly or never finishes it. A body Serve's proxy carried in the request (``deployments/proxy_body.py``)
    is taken from there, with no round trip back to the proxy.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"Request body of {declared} bytes exceeds the {limit}-byte limit.", code="body_too_large")
    carried = carried_body(request.scope)
    if carried is not None:
        if len(carried) > limit:
            raise ApiError(413, f"Request body exceeds the {limit}-byte limit.", code="body_too_large")
        return parse_json(carried)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"Request body exceeds the {limit}-byte limit.", code="body_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"Request body not received within {timeout_s:g} s.", code="body_timeout") from None
    return parse_json(b"".join(chunks))


# Deeper than any real request (a tool's JSON schema nests a few levels); every layer after the parser
# (pydantic, pickling to the engine, the chat template) recurses on the body, and Python's parser itself
# raises RecursionError, not ValueError, on a bracket bomb.
MAX_JSON_DEPTH = 64


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` containers (iterative: the check must not recurse)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object; ``NaN`` and ``Infinity``, which Python's parser takes but JSON has not, are refused,
    and so is nesting deeper than :data:`MAX_JSON_DEPTH`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"Request body is not valid UTF-8 (byte {exc.start}).", code="invalid_encoding") from exc
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise _nested_too_deeply() from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    if _too_deep(body, MAX_JSON_DEPTH):
        raise _nested_too_deeply()
    return body


def _nested_too_deeply() -> ApiError:
    return ApiError(400, f"Request body nests deeper than {MAX_JSON_DEPTH} levels.", code="invalid_json")


def requested_model(body: dict[str, Any]) -> str:
    """The body's ``model``: every generation request must name one."""
    model_id = body.get("model")
    if not isinstance(model_id, str) or not model_id:
        raise ApiError(400, "You must provide a `model` parameter.", param="model", code="missing_model")
    return model_id


def unknown_model(model_id: Any, available: Iterable[str]) -> ApiError:
    """The 404 for a model this app does not serve, listing those it does."""
    return ApiError(
        404,
        f"The model `{model_id}` does not exist. Available models: {sorted(available)}.",
        param="model",
        code="model_not_found",
    )


def check_messages(messages: Any, max_messages: int) -> None:
    """OpenAI's rules for ``messages`` that vLLM leaves to the chat template (it accepts any role), and the
    app's cap on their number (``ingress.max_messages``)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list.", param="messages", code="invalid_messages")
    if len(messages) > max_messages:
        raise ApiError(
            400,
            f"{len(messages)} messages exceed this endpoint's limit of {max_messages}.",
            param="messages",
            code="too_many_messages",
        )
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if not isinstance(role, str) or role not in CHAT_ROLES:  # a list or dict role is unhashable: a 400 too
            raise ApiError(
                400,
                f"Invalid role {role!r} in messages[{i}]; expected one of {sorted(CHAT_ROLES)}.",
                param=f"messages.{i}.role",
                code="invalid_role",
            )


TEXT_PARTS = frozenset({"text", "input_text", "refusal", "thinking"})


def _media_url(part: dict[str, Any]) -> str | None:
    """The URL a media content part names, if any (OpenAI's ``{"image_url": {"url": ...}}`` or a bare string)."""
    for key in ("image_url", "audio_url", "video_url", "file_url"):
        value = part.get(key)
        if isinstance(value, dict):
            value = value.get("url")
        if isinstance(value, str):
            return value
    return None


def _allowed_host(host: str, domains: list[str]) -> bool:
    return any(host == d or host.endswith("." + d) for d in domains)


def check_media(messages: list[Any], media: MediaConfig) -> None:
    """A chat's non-text parts against ``media``: refused when media is off, URLs only where allowed.

    Checked before anything fetches: the ingress refuses, so an engine on a GPU node never makes the
    request (vLLM would follow redirects to any host the node can reach).
    """
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            kind = part.get("type") if isinstance(part, dict) else None
            if not isinstance(part, dict) or (isinstance(kind, str) and kind in TEXT_PARTS):
                continue
            where = f"messages.{i}.content.{j}"
            if not media.enabled:
                raise ApiError(
                    400,
                    f"Content part type {kind!r} is not accepted: this endpoint is text-only (ingress.media.enabled).",
                    param=where,
                    code="media_not_allowed",
                )
            url = _media_url(part)
            if url is None or url.startswith("data:"):
                continue
            try:
                parts = urlsplit(url)
                host = (parts.hostname or "").lower()
            except ValueError:  # e.g. an unclosed IPv6 bracket
                parts, host = None, ""
            if parts is None or parts.scheme != "https" or not _allowed_host(host, media.allowed_domains):
                raise ApiError(
                    400,
                    "Media URLs must be data: URLs or https URLs on an allowed domain (ingress.media.allowed_domains).",
                    param=where,
                    code="media_url_not_allowed",
                )


def protocol(kind: str) -> type:
    """vLLM's request model for ``kind`` ("chat" or "completions"), imported on first use (vLLM is heavy)."""
    if kind == "chat":
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest


def materialized(req: Any) -> Any:
    """``req`` with its messages' lazily validated iterables made lists.

    pydantic validates ``Iterable[...]`` fields (a message's content parts, an assistant's tool calls)
    lazily, leaving a ``ValidatorIterator`` that cannot be pickled to the engine replica; iterating here
    also validates the parts, so a bad one is the client's 400, not the replica's failure.
    """
    for msg in getattr(req, "messages", None) or ():
        if isinstance(msg, dict):
            for key, value in msg.items():
                if not isinstance(value, str | bytes | list | dict | int | float | None) and hasattr(value, "__iter__"):
                    msg[key] = list(value)
    return req


def parsed_request(kind: str, body: dict[str, Any]) -> Any:
    """The request the ingress sends on: vLLM's protocol model of ``body``, made picklable."""
    return materialized(protocol(kind).model_validate(body))


def check_template_inputs(body: dict[str, Any], allowed: frozenset[str]) -> None:
    """A chat's template inputs: no template of the client's own, and only kwargs the model's template reads.

    A client ``chat_template`` is a Jinja program run on the ingress and the engines (vLLM refuses it
    unless trusted, but only after the ingress would have rendered it); ``chat_template_kwargs`` keys
    the template does not read (``allowed``: :func:`deployments.ingress.prompt.template_variables`) are
    dropped, as vLLM drops unknown ones, so the tokenizer's own arguments never reach it.
    """
    kwargs = body.get("chat_template_kwargs")
    if body.get("chat_template") is not None or (isinstance(kwargs, dict) and "chat_template" in kwargs):
        raise ApiError(
            400,
            "A request may not carry its own `chat_template`: the model's template is used.",
            param="chat_template",
            code="chat_template_not_allowed",
        )
    if isinstance(kwargs, dict) and set(kwargs) - allowed:
        body["chat_template_kwargs"] = {k: v for k, v in kwargs.items() if k in allowed}
        logger.debug("chat_template_kwargs not read by the template dropped: %s", sorted(set(kwargs) - allowed))


def prompt_count(prompt: Any) -> int:
    """Prompts in a completions request: a string or a token list is one, a list of them is a batch."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return len(prompt)
    return 1


def sequences(req: Any) -> int:
    """The sequences ``req`` runs on the engine at once: prompts x n."""
    return prompt_count(getattr(req, "prompt", None)) * (req.n or 1)


def output_tokens(req: Any, max_model_len: int) -> int:
    """The most tokens ``req`` may generate: prompts x n x max_tokens (a missing max_tokens is a whole context)."""
    max_tokens = getattr(req, "max_completion_tokens", None) or getattr(req, "max_tokens", None) or max_model_len
    return sequences(req) * max_tokens


# Template tokens a chat message may add around its text (Gemma-4: a turn's start and end markers, its role).
MESSAGE_TEMPLATE_TOKENS = 8


def _text_bytes(value: Any) -> int:
    """UTF-8 bytes of the strings in ``value`` plus one per token id, media parts left out (their tokens are
    the encoder's, not their URL's length: :func:`token_bound` counts them apart)."""
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1  # a token id
    if isinstance(value, dict):
        if _media_url(value) is not None:
            return 0
        return sum(_text_bytes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    return 0


def _media_parts(value: Any) -> int:
    """How many media content parts (images, audio, video, files) ``value`` holds."""
    if isinstance(value, dict):
        return 1 if _media_url(value) is not None else sum(_media_parts(v) for v in value.values())
    if isinstance(value, list):
        return sum(_media_parts(v) for v in value)
    return 0


def token_bound(text_size: int, messages: list[Any], req: Any, max_model_len: int, media: MediaConfig) -> int:
    """An upper bound on the tokens ``req`` spends: its prompt's text in bytes (``text_size``, from
    :func:`text_bytes`; a token covers at least one byte) plus the template's tokens per message in
    ``messages`` and ``media.tokens_per_item`` per media part, and :func:`output_tokens`.

    What a key's token budget reserves up front; the engine's usage settles it when the request ends.
    """
    prompt = text_size + MESSAGE_TEMPLATE_TOKENS * (len(messages) + 1)
    prompt += media.tokens_per_item * _media_parts(messages)
    return prompt + output_tokens(req, max_model_len)


def text_bytes(body: dict[str, Any]) -> int:
    """The text a request's prompt is made of, in UTF-8 bytes (a token id counts one): its messages, tools
    and completion prompts, media parts left out."""
    return _text_bytes(body.get("messages")) + _text_bytes(body.get("tools")) + _text_bytes(body.get("prompt"))


def check_text_bytes(size: int, body: dict[str, Any], limits: RequestLimits) -> None:
    """The request's text (``size``, :func:`text_bytes` of ``body``) against ``limits.max_text_bytes``, before
    anything parses or renders it."""
    if size > limits.max_text_bytes:
        raise ApiError(
            400,
            f"This request carries {size} bytes of text, more than this endpoint's limit of {limits.max_text_bytes}.",
            param="messages" if "messages" in body else "prompt",
            code="text_too_long",
        )


def check_cost(req: Any, limits: RequestLimits, max_model_len: int) -> None:
    """The request's work against ``limits``: choices, batch size, beam search, and its output budget."""
    n = req.n or 1
    if n > limits.max_n:
        raise ApiError(
            400, f"`n` of {n} exceeds this endpoint's limit of {limits.max_n}.", param="n", code="n_too_large"
        )
    prompts = prompt_count(getattr(req, "prompt", None))
    if prompts > limits.max_prompts:
        raise ApiError(
            400,
            f"{prompts} prompts exceed this endpoint's limit of {limits.max_prompts} per request.",
            param="prompt",
            code="too_many_prompts",
        )
    if getattr(req, "use_beam_search", False) and not limits.allow_beam_search:
        raise ApiError(
            400, "Beam search is not enabled on this endpoint.", param="use_beam_search", code="beam_search_off"
        )
    max_tokens = getattr(req, "max_completion_tokens", None) or getattr(req, "max_tokens", None) or max_model_len
    budget = max(limits.max_output_tokens, max_model_len)
    if output_tokens(req, max_model_len) > budget:
        raise ApiError(
            400,
            f"{prompts} prompt(s) x n={n} x max_tokens={max_tokens} asks for more than the {budget} output tokens "
            "one request may generate here.",
            param="max_tokens",
            code="output_budget_exceeded",
        )


# Fields the ingress or the engines own: kv_transfer_params carries a chat's prompt token ids from the ingress
# (there is no disaggregated prefill here); ec_transfer_params and vllm_xargs reach the engine's internals
# (encoder-cache transfer, arbitrary SamplingParams.extra_args for plugins) and are no client's business.
ENGINE_ONLY_FIELDS = ("kv_transfer_params", "ec_transfer_params", "vllm_xargs")


@dataclass(frozen=True, slots=True)
class ValidatedRequest:
    """A client's request, parsed (vLLM's request type) and checked, with the most tokens it can spend."""

    request: Any
    token_bound: int  # :func:`token_bound`: what a key's token budget reserves for it up front


def validated_request(
    kind: str,
    body: dict[str, Any],
    *,
    max_messages: int,
    template_inputs: frozenset[str],
    limits: RequestLimits,
    max_model_len: int,
    media: MediaConfig,
) -> ValidatedRequest:
    """:func:`parsed_request` of ``body``, with every way it can fail on client input turned into a 400.

    A client's :data:`ENGINE_ONLY_FIELDS` are dropped first. A chat's messages are capped at
    ``max_messages`` and its template inputs checked against ``template_inputs``
    (:func:`check_template_inputs`), its media against ``media`` (:func:`check_media`); any request's text
    against ``limits`` (:func:`check_text_bytes`), and the parsed request's work too (:func:`check_cost`).
    The text is measured once, for the limit and for the token bound.
    """
    from pydantic import ValidationError
    from vllm.exceptions import VLLMClientError

    for name in ENGINE_ONLY_FIELDS:
        if body.pop(name, None) is not None:
            logger.debug("client %s ignored: engine-only field", name)
    if kind == "chat":
        check_messages(body.get("messages"), max_messages)
        check_media(body["messages"], media)
        check_template_inputs(body, template_inputs)
    size = text_bytes(body)
    check_text_bytes(size, body, limits)
    try:
        req = parsed_request(kind, body)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
    except VLLMClientError as exc:  # vLLM's own validators raise these past pydantic
        raise ApiError(400, f"Invalid request: {exc}", param=getattr(exc, "parameter", None)) from exc
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        # Some of vLLM's `mode="before"` validators assume a field's type before pydantic checks it
        # (e.g. `structured_outputs: true` raises AttributeError): still the client's malformed input.
        raise ApiError(400, f"Invalid request: {type(exc).__name__}: {exc}") from exc
    check_cost(req, limits, max_model_len)
    return ValidatedRequest(req, token_bound(size, body.get("messages") or [], req, max_model_len, media))
