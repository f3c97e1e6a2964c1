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
from dataclasses import dataclass
from typing import Any

from config import ModelConfig
from contracts.engine_report import PromptHashing, RoutingHint
from deployments.error_kind import error_kind

logger = logging.getLogger(__name__)

_PLAIN_MESSAGE_KEYS = frozenset({"role", "content", "name"})
# Template variables a client may not set through ``chat_template_kwargs``: the ingress and vLLM pass the
# first ones themselves, and the tokenizer fills in the special tokens and the helpers.
_NOT_CLIENT_VARIABLES = frozenset(
    {"messages", "tools", "documents", "add_generation_prompt", "chat_template", "tokenize"}
    | {"bos_token", "eos_token", "pad_token", "unk_token", "raise_exception", "strftime_now"}
)


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """A request's prompt token ids as the ingress rendered them, whether they are exactly vLLM's, and their block
    hashes where the model's router had said how it hashes (``deployments/ingress/prompt_hasher.py``)."""

    token_ids: list[int]
    exact: bool
    block_hashes: tuple[int, ...] = ()
    hashed: PromptHashing | None = None


def load_tokenizer(source: str, revision: str | None = None) -> Any:
    """The model's tokenizer at ``revision``, loaded the way vLLM loads it (so both render the same ids)."""
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(source, revision=revision)


def template_variables(tokenizer: Any) -> frozenset[str]:
    """The variables the model's chat template reads that a client may set (``chat_template_kwargs``).

    The allow-list for a request's ``chat_template_kwargs``: vLLM also passes on the tokenizer's own
    keyword arguments (``padding``, ``max_length``, ...), which do nothing useful for a chat and are
    the client's handle on the tokenizer's code paths.
    """
    import jinja2
    import jinja2.meta

    template = getattr(tokenizer, "chat_template", None) or ""
    sources = template.values() if isinstance(template, dict) else [template]
    env = jinja2.Environment()
    names: set[str] = set()
    for source in sources:
        names |= jinja2.meta.find_undeclared_variables(env.parse(source))
    return frozenset(names - _NOT_CLIENT_VARIABLES)


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
    # Rendered to text, then tokenized without special tokens (the template wrote them): vLLM's own two steps.
    text = tokenizer.apply_chat_template(
        plain if plain is not None else raw,
        tools=tools,
        add_generation_prompt=req.add_generation_prompt,
        tokenize=False,
        **kwargs,
    )
    return list(tokenizer.encode(text, add_special_tokens=False)), plain is not None


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


def render_prompt(tokenizer: Any, kind: str, req: Any) -> RenderedPrompt | None:
    """:func:`prompt_token_ids` of ``req``, or None where it fails (e.g. a template error vLLM reports properly).

    Reads ``req`` only: the ingress runs it in a worker thread under a time budget, and may hand ``req``
    to an engine while a rendering that ran out of time is still going.
    """
    try:
        token_ids, exact = prompt_token_ids(tokenizer, kind, req)
    except Exception as exc:  # noqa: BLE001 - rendering never fails a request
        logger.debug("request %s routed without its prompt tokens: %s", req.request_id, error_kind(exc))
        return None
    return RenderedPrompt(token_ids, exact)


def routing_hint(
    kind: str, req: Any, model: ModelConfig, rendered: RenderedPrompt | None, session_id: str | None
) -> RoutingHint:
    """Token ids (and session key) the router needs; routing falls back to cold, never fails a request.

    ``rendered`` is None for a model whose routing needs no tokens, and for a prompt that could not be
    rendered (in time); ``session_id`` is the client's ``x-session-id`` header: with session affinity on,
    it (or else the OpenAI ``user`` field) keys the session. Forwards the ids to the engine
    (:func:`forward_token_ids`) when they are exactly vLLM's rendering.
    """
    session = None
    if model.routing.session_affinity:
        session = session_id or getattr(req, "user", None)
    if rendered is None:
        return RoutingHint(session_key=session)
    # When our ids are not exactly vLLM's (tool-call history, media), vLLM renders the prompt itself
    # and the router routes on our close approximation.
    if rendered.exact:
        forward_token_ids(kind, req, rendered.token_ids, model.engine.max_model_len)
    return RoutingHint(tuple(rendered.token_ids), session, rendered.block_hashes, rendered.hashed)
