"""The config becomes a `vllm serve` command line that vLLM's own parser accepts as meant."""

from __future__ import annotations

import json

from config import ModelConfig
from config.vllm_args import speculative_config
from deployments.engine.engine_args import vllm_serve_argv


def _model(**kw: object) -> ModelConfig:
    base = {
        "id": "m",
        "target": "org/target",
        "speculative": {"draft_model": "org/drafter", "num_speculative_tokens": 7, "attention_backend": "flash_attn"},
        "engine": {
            "max_num_seqs": 4,
            "max_num_batched_tokens": 64,
            "enable_prefix_caching": False,
            "kv_cache_memory_gib": 0.5,
            "extra_engine_args": {"max_logprobs": 7},
        },
    }
    return ModelConfig.model_validate(base | kw)


def _parse(argv: list[str]):
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)


def test_vllm_parses_the_argv_as_configured():
    args = _parse(vllm_serve_argv(_model()))
    assert args.model == "org/target"
    assert args.served_model_name == ["m"]
    assert args.max_num_seqs == 4
    assert args.max_num_batched_tokens == 64
    assert args.enable_prefix_caching is False
    assert args.max_logprobs == 7
    assert args.kv_cache_memory_bytes == 2**29
    assert args.enable_auto_tool_choice is True
    assert args.tool_call_parser == "gemma4"
    spec = args.speculative_config
    spec = spec if isinstance(spec, dict) else json.loads(spec)
    assert spec == {
        "method": "dflash",
        "model": "org/drafter",
        "num_speculative_tokens": 7,
        "attention_backend": "flash_attn",
    }


def test_draft_semantics_and_cache_retention_reach_vllm():
    args = _parse(vllm_serve_argv(_model()))
    assert args.additional_config == {"dflash_serve": {"draft_semantics": "auto"}}  # what the plugin reads
    assert args.prefix_cache_retention_interval is None  # dense: answers stay reusable
    assert args.chat_template_content_format == "string"  # Gemma-4's template prints a system message as is
    stock = _model(speculative={"draft_model": "org/drafter", "draft_semantics": "vllm"})
    assert _parse(vllm_serve_argv(stock)).additional_config == {"dflash_serve": {"draft_semantics": "vllm"}}
    checkpoints = _model(engine={"prefix_cache_retention": "checkpoints"})
    assert _parse(vllm_serve_argv(checkpoints)).prefix_cache_retention_interval == 0


def test_ar_baseline_has_no_speculative_config():
    model = _model(speculative=None)
    assert speculative_config(model) is None
    argv = vllm_serve_argv(model)
    assert "--speculative-config" not in argv and "--additional-config" not in argv
