"""The config becomes a `vllm serve` command line that vLLM's own parser accepts as meant."""

from __future__ import annotations

import json

import pytest

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


A, B, C = "a" * 40, "b" * 40, "c" * 40


def test_pinned_commits_reach_vllm_for_target_tokenizer_and_drafter():
    spec = _model().speculative
    assert spec is not None
    pinned = _model(
        revision=A,
        tokenizer="org/tok",
        tokenizer_revision=B,
        speculative=spec.model_dump() | {"draft_revision": C},
    )
    args = _parse(vllm_serve_argv(pinned))
    assert (args.revision, args.tokenizer, args.tokenizer_revision) == (A, "org/tok", B)
    drafter = args.speculative_config
    assert (drafter if isinstance(drafter, dict) else json.loads(drafter))["revision"] == C
    assert pinned.unpinned_sources() == [] and pinned.tokenizer_source() == ("org/tok", B)
    unpinned = _model()
    assert unpinned.unpinned_sources() == ["org/target", "org/drafter"]
    assert unpinned.tokenizer_source() == ("org/target", None)
    args = _parse(vllm_serve_argv(unpinned))
    assert args.revision is None and args.tokenizer_revision is None


@pytest.mark.parametrize(
    "fields",
    [
        {"revision": "main"},  # a branch moves: not a pin
        {"revision": A.upper()},
        {"tokenizer_revision": B},  # pins a tokenizer the model does not name
        {"revision": A, "tokenizer": "org/tok"},  # vLLM would look for A in org/tok
    ],
    ids=["branch", "uppercase", "no-tokenizer", "tokenizer-unpinned"],
)
def test_revisions_that_do_not_pin_are_refused(fields: dict):
    with pytest.raises(ValueError):
        _model(**fields)


def test_local_directories_need_no_pin():
    local = _model(target="/models/t", speculative={"draft_model": "./d", "num_speculative_tokens": 7})
    assert local.unpinned_sources() == []
