"""Prompt rendering at the ingress (deployments/ingress/prompt.py): the ids, whether they are vLLM's, and when
the engine is handed them. The renderings themselves are checked against a real engine in
tests/e2e/test_precise_routing.py; here a fake tokenizer shows what reaches it."""

from __future__ import annotations

from typing import Any

import pytest

from config import ModelConfig, RoutingConfig
from deployments.ingress.prompt import plain_messages, prompt_token_ids, render_prompt, routing_hint, template_variables
from deployments.ingress.validation import parsed_request

BOS = 2


class _Tokenizer:
    """Characters as ids, BOS first; the chat template is recorded, not applied."""

    def __init__(self) -> None:
        self.templated: list[Any] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [BOS] * add_special_tokens + [ord(c) for c in text]

    def apply_chat_template(self, messages: list[dict], **kwargs: Any) -> str:
        assert kwargs["tokenize"] is False  # rendered to text here; encode() tokenizes it, as vLLM does
        self.templated.append(messages)
        return "".join(map(chr, (BOS, 7, 8)))  # the template writes BOS itself


def _completion(**body: Any) -> Any:
    return parsed_request("completions", {"model": "m", **body})


def _chat(messages: list[dict], **body: Any) -> Any:
    return parsed_request("chat", {"model": "m", "messages": messages, **body})


def _model(max_model_len: int = 4096, session_affinity: bool = False) -> ModelConfig:
    return ModelConfig(
        id="m",
        target="t",
        engine={"max_model_len": max_model_len},
        routing=RoutingConfig(session_affinity=session_affinity),
    )


def test_plain_messages_join_text_parts_with_newlines():
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    messages = [{"role": "system", "content": "s", "name": "n"}, {"role": "user", "content": parts}]
    assert plain_messages(messages) == [
        {"role": "system", "content": "s", "name": "n"},
        {"role": "user", "content": "a\nb"},
    ]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function"}]},
        {"role": "assistant", "content": "x", "reasoning": "why"},
    ],
    ids=["media", "tool-calls", "reasoning"],
)
def test_messages_vllm_transforms_are_left_to_vllm(message: dict):
    assert plain_messages([{"role": "user", "content": "hi"}, message]) is None


def test_completion_ids_are_the_encoded_prompt_with_bos():
    tok = _Tokenizer()
    assert prompt_token_ids(tok, "completions", _completion(prompt="ab")) == ([BOS, 97, 98], True)
    assert prompt_token_ids(tok, "completions", _completion(prompt="ab", add_special_tokens=False)) == ([97, 98], True)
    assert prompt_token_ids(tok, "completions", _completion(prompt=[5, 6])) == ([5, 6], True)
    assert prompt_token_ids(tok, "completions", _completion(prompt=["ab", "c"])) == ([BOS, 97, 98], False)


@pytest.mark.parametrize("extra", [{"suffix": "end"}, {"truncate_prompt_tokens": 1}], ids=["suffix", "truncation"])
def test_completions_vllm_renders_otherwise_are_not_exact(extra: dict):
    assert prompt_token_ids(_Tokenizer(), "completions", _completion(prompt="ab", **extra)) == ([BOS, 97, 98], False)


def test_chat_ids_come_from_the_template_of_the_plain_messages():
    tok = _Tokenizer()
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert prompt_token_ids(tok, "chat", _chat([{"role": "user", "content": parts}])) == ([BOS, 7, 8], True)
    assert tok.templated == [[{"role": "user", "content": "a\nb"}]]


def _hint(kind: str, req: Any, model: Any, tokenizer: Any, session_id: str | None) -> Any:
    """The hint as the ingress builds it: rendered (when the model's routing needs tokens), then hinted."""
    rendered = render_prompt(tokenizer, kind, req) if tokenizer is not None else None
    return routing_hint(kind, req, model, rendered, session_id)


def test_completion_prompt_is_forwarded_as_ids():
    req = _completion(prompt="ab")
    hint = _hint("completions", req, _model(), _Tokenizer(), None)
    assert hint.token_ids == (BOS, 97, 98) and hint.session_key is None
    assert req.prompt == [BOS, 97, 98]


@pytest.mark.parametrize(
    "extra",
    [{"echo": True}, {"echo": True, "logprobs": 1}, {"suffix": "z"}],
    ids=["echo", "echo-logprobs", "suffix"],
)
def test_completion_prompt_stays_text_where_vllm_would_answer_otherwise(extra: dict):
    """echo: vLLM would echo the ids decoded, BOS included, instead of the prompt as sent."""
    req = _completion(prompt="ab", **extra)
    hint = _hint("completions", req, _model(), _Tokenizer(), None)
    assert hint.token_ids == (BOS, 97, 98)  # still routed on its ids
    assert req.prompt == "ab"


def test_a_completion_prompt_longer_than_the_context_stays_text():
    """vLLM refuses it either way, with the wording of its text path."""
    fits, too_long = _completion(prompt="x" * 15), _completion(prompt="x" * 16)  # BOS makes 16 and 17 ids
    _hint("completions", fits, _model(max_model_len=16), _Tokenizer(), None)
    assert len(_hint("completions", too_long, _model(max_model_len=16), _Tokenizer(), None).token_ids) == 17
    assert fits.prompt == [BOS] + [ord("x")] * 15 and too_long.prompt == "x" * 16


def test_chat_ids_are_forwarded_through_kv_transfer_params_unless_echo():
    req = _chat([{"role": "user", "content": "hi"}])
    _hint("chat", req, _model(), _Tokenizer(), None)
    assert req.kv_transfer_params == {"prompt_token_ids": [BOS, 7, 8]}
    echoed = _chat([{"role": "user", "content": "hi"}], echo=True)
    assert _hint("chat", echoed, _model(), _Tokenizer(), None).token_ids == (BOS, 7, 8)
    assert echoed.kv_transfer_params is None


def test_a_failed_rendering_routes_cold_and_forwards_nothing():
    class Broken(_Tokenizer):
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            raise ValueError("no")

    req = _completion(prompt="ab")
    assert _hint("completions", req, _model(), Broken(), None).token_ids == ()
    assert _hint("completions", req, _model(), None, None).token_ids == ()
    assert req.prompt == "ab"


def test_session_key_is_the_header_else_the_user_with_affinity_on():
    req = _completion(prompt="ab", user="u")
    assert _hint("completions", req, _model(session_affinity=True), None, "s").session_key == "s"
    assert _hint("completions", req, _model(session_affinity=True), None, None).session_key == "u"
    assert _hint("completions", req, _model(), None, "s").session_key is None


def test_client_template_variables_are_what_the_template_reads_less_what_the_caller_sets():
    """Gemma-4's template reads enable_thinking; the tokenizer's own kwargs (padding, ...) are not template inputs."""
    from deployments.ingress.prompt import load_tokenizer
    from training.gemma4_layout import TOKENIZER_DIR

    allowed = template_variables(load_tokenizer(str(TOKENIZER_DIR)))
    assert "enable_thinking" in allowed
    assert not allowed & {"messages", "tools", "add_generation_prompt", "bos_token", "padding", "max_length"}
