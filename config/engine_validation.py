"""Checks of a model's engine settings that need vLLM's knowledge, run when the config loads.

Each mistake here would otherwise surface only when an engine replica starts on a GPU node, minutes
and a node's start later, or never (a router that silently misses every cached prefix):

* ``engine.extra_engine_args``: every key goes through vLLM's own ``vllm serve`` parser, the one the
  replica parses its argv with, so an unknown name or a bad value is rejected with vLLM's message; a
  key that sets an option the config already sets (the table in ``config/vllm_args.py``) is rejected
  with the field to set instead.
* ``prefix_caching_hash_algo``: the prefix router reproduces vLLM's block hashes for one algorithm
  only (``routing/hashing.py``); :func:`none_hash_seed` is vLLM's rule for the seed of those hashes.
* ``speculative.num_speculative_tokens`` against a local DFlash drafter's ``block_size``.

Importing vLLM takes seconds, so it happens only for a model that has extras, and the parser is
built once per process. This module imports no Ray, Redis or HTTP client, and vLLM only lazily.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config.vllm_args import option_argv, owned_options
from routing.hashing import DEFAULT_NONE_HASH_SEED

if TYPE_CHECKING:
    from config.engine import EngineConfig, SpeculativeConfig
    from config.model import ModelConfig

VLLM_DEFAULT_HASH_ALGO = "sha256"
"""vLLM's default ``prefix_caching_hash_algo`` (``CacheConfig``): the engines' algorithm unless an extra sets it."""

ROUTER_HASH_ALGO = "sha256"
"""The one algorithm ``routing/hashing.py`` reproduces: vLLM's ``sha256`` (SHA-256 over pickle)."""

ENGINE_PYTHONHASHSEED: str | None = None
"""``PYTHONHASHSEED`` in the engines' processes: unset. Nothing dflash-serve deploys sets it: the builder
gives the engine actors no ``runtime_env`` (``serve_app/placement.py``), the generated ``serve deploy``
config has none (``tools/serve_config.py``), the Dockerfile, ``cluster.yaml`` and ``k8s/rayservice.yaml``
export none, and the config has no field that could (``tests/unit/config/test_engine_validation.py``).
Whoever pins it in the engines' environment must pin the same value here, so the router's seed follows."""

# vLLM's _NON_CRYPTO_HASH_FUNCTIONS (v1/core/kv_cache_utils.py), by name.
_NON_CRYPTO_HASH_ALGOS = frozenset({"xxhash", "xxhash_cbor"})

# vLLM folds these shorthands into --speculative-config (AsyncEngineArgs.create_speculative_config):
# through extras they would override the config's drafter, or add one to the AR baseline.
_FOLDED_INTO = {
    "spec_method": "speculative_config",
    "spec_model": "speculative_config",
    "spec_tokens": "speculative_config",
}


@functools.cache
def _serve_parser() -> argparse.ArgumentParser:
    """vLLM's ``vllm serve`` parser as the replica builds it, raising on a bad value instead of exiting."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(exit_on_error=False))


def _vllm_dest(model_id: str, key: str, value: Any) -> str:
    """The argparse dest vLLM's parser gives ``key``; ValueError when it does not take ``key`` with ``value``."""
    where = f"model {model_id!r}: engine.extra_engine_args.{key}={value!r}"
    parser = _serve_parser()
    argv = option_argv(key, value)
    # An exact flag, not argparse's prefix matching: an abbreviation would break when vLLM adds a longer option.
    action = parser._option_string_actions.get(argv[0])
    if action is None:
        close = difflib.get_close_matches(key.replace("-", "_"), [a.dest for a in parser._actions], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see `vllm serve --help`)"
        raise ValueError(f"{where}: vLLM's `vllm serve` has no option {argv[0]}{hint}")
    if action.nargs == 0 and not isinstance(value, bool):
        raise ValueError(f"{where}: {argv[0]} is a switch; give true or false")
    try:
        parser.parse_known_args(argv)
    except argparse.ArgumentError as exc:
        raise ValueError(f"{where}: vLLM rejects it: {exc}") from None
    return action.dest


def check_extra_engine_args(model: ModelConfig) -> None:
    """Reject an extra vLLM would reject at replica start, or one that repeats an option the config sets."""
    owned = owned_options(model)
    for key, value in model.engine.extra_engine_args.items():
        dest = _vllm_dest(model.id, key, value)
        owner = owned.get(_FOLDED_INTO.get(dest, dest))
        if owner is not None:
            raise ValueError(
                f"model {model.id!r}: engine.extra_engine_args.{key}={value!r} sets vLLM's {dest}, which the "
                f"config sets from `{owner.field}`; set `{owner.field}` instead and remove the key"
            )


def engine_hash_algo(engine: EngineConfig) -> str:
    """The engines' ``prefix_caching_hash_algo``: the extra that sets it (either spelling), else vLLM's default."""
    for key, value in engine.extra_engine_args.items():
        if key.replace("-", "_") == "prefix_caching_hash_algo":
            return str(value)
    return VLLM_DEFAULT_HASH_ALGO


def check_router_hash(model: ModelConfig) -> None:
    """A prefix router must hash prompts as the engines do (pow2 and round_robin hash nothing)."""
    algo = engine_hash_algo(model.engine)
    if model.routing.policy == "prefix" and algo != ROUTER_HASH_ALGO:
        raise ValueError(
            f"model {model.id!r}: engine.extra_engine_args.prefix_caching_hash_algo={algo!r} with routing.policy="
            f"prefix: the router reproduces only vLLM's {ROUTER_HASH_ALGO!r} block hashes (routing/hashing.py), so "
            "it would never find a cached prefix. Remove the key, or route with policy pow2 or round_robin"
        )


def none_hash_seed(hash_algo: str, python_hash_seed: str | None) -> str | None:
    """vLLM's ``resolve_none_hash_seed`` (v1/core/kv_cache_utils.py), with the engines' PYTHONHASHSEED given.

    The seed an engine derives NONE_HASH, the root of its block hash chains, from; None where vLLM draws
    it at random per process (a non-cryptographic algorithm without PYTHONHASHSEED), which no router can
    reproduce. The value is passed in, never read from this process's environment: the router's process
    is not the engines'.
    """
    if python_hash_seed is not None:
        return python_hash_seed
    if hash_algo in _NON_CRYPTO_HASH_ALGOS:
        return None
    return DEFAULT_NONE_HASH_SEED


def engine_none_hash_seed(model: ModelConfig) -> str | None:
    """The NONE_HASH seed of this model's engines as deployed: the seed its router must hash prompts with."""
    return none_hash_seed(engine_hash_algo(model.engine), ENGINE_PYTHONHASHSEED)


def drafter_block_size(draft_model: str) -> int | None:
    """The block size a local DFlash drafter was trained with, from its ``config.json``; None if nothing local says.

    The one file read of config validation, on purpose: vLLM 0.32 never reads a DFlash drafter's block
    size (``qwen3_dflash.py``, ``config/speculative.py``), so a K past it is not refused at replica start
    either; the drafter drafts positions it was never trained on and acceptance collapses, which costs
    a GPU node's start and a benchmark to notice. ``dflash_config`` wins over the top level, the
    precedence vLLM gives DFlash config values (``_get_qwen3_dspark_value``). A Hugging Face id has
    nothing local to read (no network at load): None.
    """
    path = Path(draft_model) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"speculative.draft_model: {path} is not valid JSON ({exc})") from None
    nested = config.get("dflash_config") or {}
    value = nested.get("block_size", config.get("block_size"))
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def check_drafter_block(spec: SpeculativeConfig) -> None:
    """K must fit the drafter's block: DFlash drafts ``block_size`` positions, the first the last verified token."""
    block = drafter_block_size(spec.draft_model)
    if block is not None and spec.num_speculative_tokens > block - 1:
        raise ValueError(
            f"speculative.num_speculative_tokens={spec.num_speculative_tokens} does not fit the drafter "
            f"{spec.draft_model!r}: its config.json has block_size={block}, and a block's first position is the "
            f"last verified token, so it drafts at most {block - 1}. Set num_speculative_tokens <= {block - 1}"
        )


def check_engine(model: ModelConfig) -> None:
    """Every check of this module for one model (vLLM is loaded only when the model has extras)."""
    if model.engine.extra_engine_args:
        check_extra_engine_args(model)
    check_router_hash(model)
    if model.speculative is not None:
        check_drafter_block(model.speculative)
