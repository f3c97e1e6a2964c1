"""Translate a :class:`~config.ModelConfig` into a ``vllm serve`` command line.

The engine replica parses this argv with vLLM's own ``vllm serve`` argument parser, so every
setting means exactly what it means to ``vllm serve`` and an unknown or mistyped option fails at
replica start with vLLM's message. The same argv launches a bare ``vllm serve`` for the overhead
benchmark: both sides of that comparison run one engine configuration by construction.
"""

from __future__ import annotations

import json
from typing import Any

from config import ModelConfig
from vllm_plugins.draft_semantics import ADDITIONAL_CONFIG_KEY


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _option(name: str, value: Any) -> list[str]:
    """One option as vLLM's parser expects it (booleans are ``--x`` / ``--no-x``)."""
    if isinstance(value, bool):
        return [_flag(name) if value else "--no-" + name.replace("_", "-")]
    if value is None:
        return [_flag(name), "None"]  # vLLM's parser reads it as None for optional fields
    if isinstance(value, dict | list):
        return [_flag(name), json.dumps(value)]
    return [_flag(name), str(value)]


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
    if spec.attention_backend:
        out["attention_backend"] = spec.attention_backend
    return out


def vllm_serve_argv(model: ModelConfig, kv_events_config: dict[str, Any] | None = None) -> list[str]:
    """The arguments of ``vllm serve`` that reproduce this model's engine (plus its KV event publisher)."""
    eng = model.engine
    argv = ["--model", model.target, "--served-model-name", model.id]
    if model.tokenizer:
        argv += ["--tokenizer", model.tokenizer]
    options: dict[str, Any] = {
        "max_model_len": eng.max_model_len,
        "max_num_seqs": eng.max_num_seqs,
        "max_num_batched_tokens": eng.max_num_batched_tokens,
        "gpu_memory_utilization": eng.gpu_memory_utilization,
        "enforce_eager": eng.enforce_eager,
        "enable_prefix_caching": eng.enable_prefix_caching,
        "prefix_cache_retention_interval": None if eng.prefix_cache_retention == "dense" else 0,
        "dtype": eng.dtype,
        "chat_template_content_format": eng.chat_template_content_format,
        "seed": eng.seed,
    }
    if eng.tensor_parallel_size > 1:
        # vLLM's Ray executor starts one worker per bundle of the replica's placement group (serve_app/placement.py).
        options["tensor_parallel_size"] = eng.tensor_parallel_size
        options["distributed_executor_backend"] = "ray"
    if eng.kv_cache_memory_gib is not None:
        options["kv_cache_memory_bytes"] = int(eng.kv_cache_memory_gib * 2**30)
    if eng.block_size is not None:
        options["block_size"] = eng.block_size
    if eng.attention_backend:
        options["attention_backend"] = eng.attention_backend
    if eng.reasoning_parser:
        options["reasoning_parser"] = eng.reasoning_parser
    if eng.tool_call_parser:
        options["tool_call_parser"] = eng.tool_call_parser
        options["enable_auto_tool_choice"] = True
    spec = speculative_config(model)
    if spec is not None:
        options["speculative_config"] = spec
        # Read by the vLLM plugin in the engine's processes (vllm_plugins/zlab_dflash.py).
        options["additional_config"] = {ADDITIONAL_CONFIG_KEY: {"draft_semantics": model.speculative.draft_semantics}}
    if kv_events_config is not None:
        options["kv_events_config"] = kv_events_config
    clashes = sorted(set(options) & set(eng.extra_engine_args))
    if clashes:
        raise ValueError(f"model {model.id!r}: extra_engine_args repeats {clashes}; set them in `engine` instead")
    options |= eng.extra_engine_args
    for name, value in options.items():
        argv += _option(name, value)
    return argv
