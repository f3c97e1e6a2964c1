"""Prompt block hashes, computed exactly as vLLM's prefix cache computes them.

vLLM (``v1/core/kv_cache_utils.py``) splits a prompt into full blocks of ``block_size`` tokens and
chains them: ``hash_i = H((hash_{i-1} or NONE_HASH, tuple(block_i), extra_keys))`` with
``H = sha256(pickle(x))`` by default and ``NONE_HASH = H("vllm-none-hash")`` (unless
``PYTHONHASHSEED`` is set). KV events carry the low 64 bits of each digest, big-endian, as ints.
Using the same function lets the router's index meet the engines' events hash for hash; the router
hashes each prompt once and every policy reuses the result.

Only plain text prompts are hashed: requests with a LoRA, multimodal input or a cache salt carry
``extra_keys`` in vLLM and are routed as cold (their hashes would never match).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import NewType

BlockHash = NewType("BlockHash", int)
"""The external form of a vLLM block hash: the digest's low 64 bits, as in KV events."""

DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
_MASK_64 = (1 << 64) - 1


def _sha256(value: object) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def none_hash(seed: str = DEFAULT_NONE_HASH_SEED) -> bytes:
    """The parent hash of a prompt's first block."""
    return _sha256(seed)


def block_hashes(token_ids: Sequence[int], block_size: int, seed: str = DEFAULT_NONE_HASH_SEED) -> list[BlockHash]:
    """External hashes of the prompt's full blocks, in order (a trailing partial block is not cached)."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    parent = none_hash(seed)
    out: list[BlockHash] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = _sha256((parent, tuple(token_ids[start : start + block_size]), None))
        out.append(BlockHash(int.from_bytes(parent, "big") & _MASK_64))
    return out
