"""The prompt as the engine will see it, rendered once at the ingress: for the router, and for the engine.

The prefix-aware router needs a request's prompt token ids to find the replica holding its KV blocks,
so the ingress renders the request as vLLM does (chat template with the model's tokenizer, text parts
joined as vLLM's ``string`` content format joins them, BOS for completions). Where that rendering is
exactly vLLM's and vLLM's answer cannot tell the difference, the ids are handed to the engine too, so
the prompt is tokenized once: as a completion's prompt, or through vLLM's
``kv_transfer_params.prompt_token_ids`` path for a chat. Everything else is left to vLLM to render, and
the router routes on the ingress's close approximation; rendering never fails a request.
"""

from __future__ import annotations

import logging
from typing import Any

from config import ModelConfig
from contracts.engine_report import RoutingHint

logger = logging.getLogger(__name__)

_PLAIN_MESSAGE_KEYS = frozenset({"role", "content", "name"})


def load_tokenizer(source: str) -> Any:
    """The model's tokenizer, loaded the way vLLM loads it (so both render the same ids)."""
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(source)


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Messages as vLLM's 'string' content format hands them to the template (text parts joined by
    newlines), or None when vLLM transforms them further (tool calls, reasoning, media): those are left
    to vLLM to render."""
    out = []
    for msg in messages:
        if set(msg) - _PLAIN_MESSAGE_KEYS:
            return None
        content = msg.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                return None
            content = "\n".join(str(p.get("text", "")) for p in content)
        out.append({**msg, "content": content})
    return out


def prompt_token_ids(tokenizer: Any, kind: str, req: Any) -> tuple[list[int], bool]:
    """The prompt as the engine will see it (chat template applied for chat, BOS added for completions),
    and whether it is exactly vLLM's rendering, so that the engine may take it in place of its own."""
    if kind == "completions":
        return _completion_ids(tokenizer, req)
    kwargs = dict(req.chat_template_kwargs or {})
    raw = [m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in req.messages]
    plain = plain_messages(raw)
    tools = [t.model_dump() for t in req.tools] if req.tools else None  # as vLLM passes them, None fields too
    ids = tokenizer.apply_chat_template(
        plain if plain is not None else raw,
        tools=tools,
        add_generation_prompt=req.add_generation_prompt,
        tokenize=True,
        return_dict=False,
        **kwargs,
    )
    return list(ids), plain is not None


def _completion_ids(tokenizer: Any, req: Any) -> tuple[list[int], bool]:
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return list(prompt), True
    if isinstance(prompt, list):  # a batch: route on its first prompt
        return list(tokenizer.encode(prompt[0] if prompt else "", add_special_tokens=req.add_special_tokens)), False
    ids = list(tokenizer.encode(prompt, add_special_tokens=req.add_special_tokens))
    # vLLM renders a `suffix` into a fill-in-the-middle prompt, and truncates a text prompt its own way
    # (its tokenizer's cut keeps BOS, a left cut tokenizes trimmed text): neither gives these ids.
    return ids, req.suffix is None and req.truncate_prompt_tokens is None


def forward_token_ids(kind: str, req: Any, token_ids: list[int], max_model_len: int) -> None:
    """Hand ``token_ids``, exactly vLLM's rendering of ``req``, to the engine where its answer stays the same.

    Never with ``echo``: vLLM echoes the prompt as the client sent it, and from ids it would decode them
    instead (special tokens such as BOS included). Nor for a completion's prompt longer than the context:
    vLLM refuses it either way, but from text with its own wording ("at least N tokens", or characters).
    """
    if req.echo:
        return
    if kind == "completions":
        if isinstance(req.prompt, str) and len(token_ids) <= max_model_len:
            req.prompt = token_ids  # tokenized once: the engine takes these ids as the prompt
        return
    # vLLM's chat layer takes forwarded ids in place of its own rendering (its disaggregated-serving
    # path), still parsing reasoning and tool calls as usual.
    req.kv_transfer_params = {"prompt_token_ids": token_ids}


def routing_hint(kind: str, req: Any, model: ModelConfig, tokenizer: Any | None, session_id: str | None) -> RoutingHint:
    """Token ids (and session key) the router needs; routing falls back to cold, never fails a request.

    ``tokenizer`` is None for a model whose routing needs no tokens; ``session_id`` is the client's
    ``x-session-id`` header: with session affinity on, it (or else the OpenAI ``user`` field) keys the session.
    Forwards the ids to the engine (:func:`forward_token_ids`) when they are exactly vLLM's rendering.
    """
    session = None
    if model.routing.session_affinity:
        session = session_id or getattr(req, "user", None)
    token_ids: list[int] = []
    if tokenizer is not None:
        exact = False
        try:
            token_ids, exact = prompt_token_ids(tokenizer, kind, req)
        except Exception as exc:  # noqa: BLE001 - e.g. a template error vLLM will report properly
            logger.debug("request %s routed without its prompt tokens: %r", req.request_id, exc)
        # When our ids are not exactly vLLM's (tool-call history, media), vLLM renders the prompt
        # itself and the router routes on our close approximation.
        if exact:
            forward_token_ids(kind, req, token_ids, model.engine.max_model_len)
    return RoutingHint(token_ids=tuple(token_ids), session_key=session)
