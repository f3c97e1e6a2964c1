"""Translate a :class:`~config.ModelConfig` into a ``vllm serve`` command line.

The engine replica parses this argv with vLLM's own ``vllm serve`` argument parser, so every
setting means exactly what it means to ``vllm serve``. The options the config sets, and how each is
spelled, are one table in ``config/vllm_args.py``; ``engine.extra_engine_args`` follow them. The
config checked those extras with the same parser when it loaded (``config/engine_validation.py``:
known to vLLM, not repeating an option of the table), so a mistake there never costs a GPU node's
start. The same argv launches a bare ``vllm serve`` for the overhead benchmark: both sides of that
comparison run one engine configuration by construction.
"""

from __future__ import annotations

from typing import Any

from config import ModelConfig
from config.vllm_args import UNSET, option_argv, owned_options


def vllm_serve_argv(model: ModelConfig, kv_events_config: dict[str, Any] | None = None) -> list[str]:
    """The arguments of ``vllm serve`` that reproduce this model's engine (plus its KV event publisher)."""
    options = {name: o.value for name, o in owned_options(model, kv_events_config).items() if o.value is not UNSET}
    options |= model.engine.extra_engine_args  # none of them repeats an owned option (checked at config load)
    return [token for name, value in options.items() for token in option_argv(name, value)]
