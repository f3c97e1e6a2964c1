"""The router's block hashes are vLLM's own (same function, same seed, same 64-bit external form)."""

from __future__ import annotations

import random

import pytest

from routing.hashing import block_hashes


def _vllm_hashes(tokens: list[int], block_size: int) -> list[int]:
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils as k

    k.init_none_hash(sha256)
    parent = None
    out = []
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = k.hash_block_tokens(sha256, parent, tokens[start : start + block_size], None)
        out.append(int.from_bytes(parent, "big") & ((1 << 64) - 1))
    return out


@pytest.mark.parametrize("block_size", [16, 32])
def test_equal_to_vllm(block_size: int):
    rng = random.Random(0)
    tokens = [rng.randrange(262144) for _ in range(200)]
    assert block_hashes(tokens, block_size) == _vllm_hashes(tokens, block_size)


def test_prefix_property_and_partial_block():
    tokens = list(range(100))
    full = block_hashes(tokens, 16)
    assert len(full) == 6  # 96 tokens in full blocks; the last 4 are not cacheable
    assert block_hashes(tokens[:50], 16) == full[:3]
    changed = block_hashes([*tokens[:20], 999, *tokens[21:]], 16)
    assert changed[0] == full[0] and changed[1] != full[1]


def test_rejects_bad_block_size():
    with pytest.raises(ValueError):
        block_hashes([1, 2, 3], 0)
