"""Build vLLM's per-request parser state once per replica instead of once per request.

vLLM 0.32 creates a reasoning/tool parser for every chat request. For a ``ParserEngine`` parser
(Gemma-4's among them) that constructor

* calls ``tokenizer.get_vocab()`` — a fresh 262,144-entry dict for the Gemma-4 tokenizer, and
* runs ``_build_drop_info``, which compiles one regex per special token the parser does not
  handle (about 6,400 for Gemma-4) and builds a lexer shape over them.

Both depend only on the tokenizer and the parser's declarative config, never on the request, and
the results are only read afterwards (``LexerShape`` is documented immutable; the vocab and
token-id maps are only looked up). Together they cost seconds of event-loop CPU per chat request
on a small CPU, queueing every concurrent request behind them. :func:`install` memoises both,
keyed by the tokenizer's identity and the config's content, so every request after the first of
each kind reuses them. The parsed output is unchanged (tested in ``tests/integration/test_parser_cache.py``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_installed = False
# id(tokenizer) -> (tokenizer, vocab). The tokenizer is held so that its id is never reused.
_vocabs: dict[int, tuple[Any, dict[str, int]]] = {}
# (id(tokenizer), config key) -> (tokenizer, drop info)
_drop_infos: dict[tuple[int, tuple[Any, ...]], tuple[Any, Any]] = {}


def shared_vocab(tokenizer: Any) -> dict[str, int]:
    """The tokenizer's vocab, computed once per tokenizer object."""
    entry = _vocabs.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = (tokenizer, tokenizer.get_vocab())
        with _lock:
            _vocabs[id(tokenizer)] = entry
    return entry[1]


def _config_key(config: Any) -> tuple[Any, ...]:
    """Everything of a ParserEngineConfig that ``_build_drop_info`` reads, as a hashable value."""
    terminals = tuple((t.name, t.pattern.pattern, t.is_literal, t.literal) for t in config.terminal_defs)
    configured = (
        frozenset(config.token_id_terminals.values()) | config.terminal_literals | frozenset(config.preserve_tokens)
    )
    return terminals, configured


def install() -> None:
    """Patch vLLM's parser engine to reuse vocab and drop info (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        from vllm.parser.engine import parser_engine, streaming_parser_engine

        build_drop_info = streaming_parser_engine._build_drop_info

        def cached_build_drop_info(config: Any, tokenizer: Any) -> Any:
            key = (id(tokenizer), _config_key(config))
            entry = _drop_infos.get(key)
            if entry is None or entry[0] is not tokenizer:
                entry = (tokenizer, build_drop_info(config, tokenizer))
                with _lock:
                    _drop_infos[key] = entry
            return entry[1]

        streaming_parser_engine._build_drop_info = cached_build_drop_info
        vocab_property = property(lambda self: shared_vocab(self.model_tokenizer))
        parser_engine.ParserEngine.vocab = vocab_property  # type: ignore[method-assign,assignment]
        _installed = True
        logger.info("vLLM parser state is now built once per tokenizer and config")
