"""Engine settings that would fail (or silently never hit) on a GPU node are rejected when the config loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from config import AppConfig
from config.engine_validation import (
    ROUTER_HASH_ALGO,
    VLLM_DEFAULT_HASH_ALGO,
    _serve_parser,
    engine_none_hash_seed,
    none_hash_seed,
)
from routing.hashing import DEFAULT_NONE_HASH_SEED, none_hash
from tests.paths import CONFIG_DIR, REPO_ROOT


def _app(engine: dict | None = None, policy: str = "prefix", **model: object) -> dict:
    m = {"id": "m", "target": "org/target", "engine": engine or {}, "routing": {"policy": policy}, **model}
    return {"models": [m]}


def _rejected(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        AppConfig.model_validate(data)
    return str(info.value)


def test_unknown_extra_engine_arg_is_rejected_with_its_name():
    message = _rejected(_app({"extra_engine_args": {"max_logprob": 7}}))
    assert "extra_engine_args.max_logprob" in message and "--max-logprob" in message
    assert "max_logprobs" in message  # the close match vLLM does know


def test_extra_engine_arg_with_a_bad_value_is_rejected_with_vllms_message():
    assert "invalid int value" in _rejected(_app({"extra_engine_args": {"max_logprobs": "many"}}))
    assert "switch" in _rejected(_app({"extra_engine_args": {"skip_mm_profiling": "yes"}}))


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("max_model_len", 1024, "engine.max_model_len"),
        ("block-size", 16, "engine.block_size"),  # owned even where the config leaves it to vLLM
        ("enable_prefix_caching", False, "engine.enable_prefix_caching"),
        ("speculative_config", {"method": "ngram"}, "speculative"),
        ("spec_model", "org/other-drafter", "speculative"),  # vLLM folds it into --speculative-config
        ("served_model_name", "other", "id"),
        ("kv_events_config", {}, "routing.mode"),
    ],
)
def test_extra_engine_arg_that_the_config_sets_is_rejected(key: str, value: object, field: str):
    message = _rejected(_app({"extra_engine_args": {key: value}}))
    assert f"extra_engine_args.{key}" in message and f"`{field}`" in message


def test_valid_vllm_extra_args_pass():
    extras = {"limit_mm_per_prompt": {"image": 1, "video": 0}, "skip_mm_profiling": True, "max-logprobs": 3}
    assert AppConfig.model_validate(_app({"extra_engine_args": extras})).models[0].engine.extra_engine_args == extras


def _drafter(tmp_path: Path, config: dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize("config", [{"block_size": 8}, {"block_size": 16, "dflash_config": {"block_size": 8}}])
def test_k_past_a_local_drafters_block_is_rejected(tmp_path: Path, config: dict):
    spec = {"draft_model": _drafter(tmp_path, config), "num_speculative_tokens": 8}
    message = _rejected(_app(speculative=spec))
    assert "num_speculative_tokens=8" in message and "block_size=8" in message and "<= 7" in message


def test_k_that_fits_a_local_drafter_passes(tmp_path: Path):
    spec = {"draft_model": _drafter(tmp_path, {"block_size": 8}), "num_speculative_tokens": 7}
    assert AppConfig.model_validate(_app(speculative=spec)).models[0].speculative.num_speculative_tokens == 7


def test_hub_drafter_is_not_read():
    spec = {"draft_model": "z-lab/no-such-local-dir", "num_speculative_tokens": 63}
    assert AppConfig.model_validate(_app(speculative=spec)).models[0].speculative is not None


@pytest.mark.parametrize("algo", ["sha256_cbor", "xxhash"])
def test_hash_algo_the_router_cannot_reproduce_is_rejected_only_where_it_hashes(algo: str):
    extras = {"extra_engine_args": {"prefix_caching_hash_algo": algo}}
    message = _rejected(_app(extras, policy="prefix"))
    assert "prefix_caching_hash_algo" in message and algo in message and "round_robin" in message
    for policy in ("round_robin", "pow2"):
        AppConfig.model_validate(_app(extras, policy=policy))
    AppConfig.model_validate(_app({"extra_engine_args": {"prefix_caching_hash_algo": ROUTER_HASH_ALGO}}))


@pytest.mark.parametrize("algo", ["sha256", "sha256_cbor", "xxhash", "xxhash_cbor"])
def test_seed_rule_is_vllms(monkeypatch: pytest.MonkeyPatch, algo: str):
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import resolve_none_hash_seed

    fn = get_hash_fn_by_name(algo)
    monkeypatch.setenv("PYTHONHASHSEED", "1234")
    assert none_hash_seed(algo, "1234") == resolve_none_hash_seed(fn) == "1234"
    monkeypatch.delenv("PYTHONHASHSEED")
    ours = none_hash_seed(algo, None)
    if ours is None:  # vLLM draws a fresh seed per process: nothing a router could reproduce
        assert resolve_none_hash_seed(fn) != resolve_none_hash_seed(fn)
    else:
        assert ours == resolve_none_hash_seed(fn) == DEFAULT_NONE_HASH_SEED


def test_router_hash_is_vllms_default_and_reproduces_it():
    from vllm.utils.hashing import get_hash_fn_by_name

    assert VLLM_DEFAULT_HASH_ALGO == _serve_parser()._option_string_actions["--prefix-caching-hash-algo"].default
    assert none_hash(DEFAULT_NONE_HASH_SEED) == get_hash_fn_by_name(ROUTER_HASH_ALGO)(DEFAULT_NONE_HASH_SEED)


def test_engines_hash_with_vllms_fixed_seed():
    cfg = AppConfig.from_yaml(CONFIG_DIR / "gemma4-dflash-b300.yaml")
    assert engine_none_hash_seed(cfg.models[0]) == DEFAULT_NONE_HASH_SEED


def test_nothing_deployed_sets_the_engines_pythonhashseed():
    """ENGINE_PYTHONHASHSEED is None: no config field, builder, serve config or node setup can set it."""
    schema = json.dumps(AppConfig.model_json_schema())
    assert "runtime_env" not in schema and "env_vars" not in schema and "PYTHONHASHSEED" not in schema
    deployed = ["Dockerfile", "cluster.yaml", "cluster-local.yaml", "k8s/rayservice.yaml", "serve_app/*.py"]
    files = [f for pattern in deployed for f in REPO_ROOT.glob(pattern)] + list(CONFIG_DIR.glob("serve-*.yaml"))
    assert len(files) > 5
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert "PYTHONHASHSEED" not in text and "runtime_env" not in text, path
