"""The ``vllm serve`` options the config sets itself: one table that both renders them and names them.

``deployments/engine/engine_args.py`` renders a model's engine command line from :func:`owned_options`;
``config/engine_validation.py`` rejects an ``engine.extra_engine_args`` key that would set one of them
again. Both read this one table, so an option the config starts to set is guarded from the moment it is
rendered, and a validation message can name the config field that decides it. Pure (no vLLM import):
the config package imports it at load time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

from vllm_plugins.draft_semantics import ADDITIONAL_CONFIG_KEY

if TYPE_CHECKING:
    from config.model import ModelConfig


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()
"""An owned option this model leaves to vLLM's default: not rendered, still owned (not settable through extras)."""


class Owned(NamedTuple):
    """One option the config owns: the config field that decides it, and what vLLM gets (or ``UNSET``)."""

    field: str
    value: Any


def option_argv(name: str, value: Any) -> list[str]:
    """One option as vLLM's parser expects it (booleans are ``--x`` / ``--no-x``, dicts and lists JSON)."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return [flag if value else "--no-" + name.replace("_", "-")]
    if value is None:
        return [flag, "None"]  # vLLM's parser reads it as None for optional fields
    if isinstance(value, dict | list):
        return [flag, json.dumps(value)]
    return [flag, str(value)]


def speculative_config(model: ModelConfig) -> dict[str, Any] | None:
    """vLLM's ``--speculative-config`` for the model's DFlash drafter, or None for plain AR."""
    spec = model.speculative
    if spec is None:
        return None
    out: dict[str, Any] = {
        "method": spec.method,
        "model": spec.draft_model,
        "num_speculative_tokens": spec.num_speculative_tokens,
    }
    if spec.draft_revision:
        out["revision"] = spec.draft_revision
    if spec.attention_backend:
        out["attention_backend"] = spec.attention_backend
    return out


def owned_options(model: ModelConfig, kv_events_config: dict[str, Any] | None = None) -> dict[str, Owned]:
    """Every vLLM option (by argparse dest) the config sets, in command-line order; the same keys for every model."""
    eng, spec, drafter = model.engine, model.speculative, speculative_config(model)
    tp = eng.tensor_parallel_size > 1
    return {
        "model": Owned("target", model.target),
        "served_model_name": Owned("id", model.id),
        "tokenizer": Owned("tokenizer", model.tokenizer or UNSET),
        "revision": Owned("revision", model.revision or UNSET),
        "tokenizer_revision": Owned("tokenizer_revision", model.tokenizer_revision or UNSET),
        "max_model_len": Owned("engine.max_model_len", eng.max_model_len),
        "max_num_seqs": Owned("engine.max_num_seqs", eng.max_num_seqs),
        "max_num_batched_tokens": Owned("engine.max_num_batched_tokens", eng.max_num_batched_tokens),
        "gpu_memory_utilization": Owned("engine.gpu_memory_utilization", eng.gpu_memory_utilization),
        "enforce_eager": Owned("engine.enforce_eager", eng.enforce_eager),
        "enable_prefix_caching": Owned("engine.enable_prefix_caching", eng.enable_prefix_caching),
        "prefix_cache_retention_interval": Owned(
            "engine.prefix_cache_retention", None if eng.prefix_cache_retention == "dense" else 0
        ),
        "dtype": Owned("engine.dtype", eng.dtype),
        "chat_template_content_format": Owned("engine.chat_template_content_format", eng.chat_template_content_format),
        "seed": Owned("engine.seed", eng.seed),
        # vLLM's Ray executor starts one worker per bundle of the replica's placement group (serve_app/placement.py).
        "tensor_parallel_size": Owned("engine.tensor_parallel_size", eng.tensor_parallel_size if tp else UNSET),
        "distributed_executor_backend": Owned("engine.tensor_parallel_size", "ray" if tp else UNSET),
        "kv_cache_memory_bytes": Owned(
            "engine.kv_cache_memory_gib",
            UNSET if eng.kv_cache_memory_gib is None else int(eng.kv_cache_memory_gib * 2**30),
        ),
        "block_size": Owned("engine.block_size", UNSET if eng.block_size is None else eng.block_size),
        "attention_backend": Owned("engine.attention_backend", eng.attention_backend or UNSET),
        "reasoning_parser": Owned("engine.reasoning_parser", eng.reasoning_parser or UNSET),
        "tool_call_parser": Owned("engine.tool_call_parser", eng.tool_call_parser or UNSET),
        "enable_auto_tool_choice": Owned("engine.tool_call_parser", True if eng.tool_call_parser else UNSET),
        "speculative_config": Owned("speculative", UNSET if drafter is None else drafter),
        # Read by the vLLM plugin in the engine's processes (vllm_plugins/zlab_dflash.py).
        "additional_config": Owned(
            "speculative.draft_semantics",
            UNSET if spec is None else {ADDITIONAL_CONFIG_KEY: {"draft_semantics": spec.draft_semantics}},
        ),
        # Set by the replica in precise routing mode, to relay the engine's KV events.
        "kv_events_config": Owned("routing.mode", UNSET if kv_events_config is None else kv_events_config),
    }
