"""The router's block hashes are vLLM's own (same function, same seed, same 64-bit external form)."""

from __future__ import annotations

import random

import pytest

from contracts.engine_report import BlockGeometry
from routing.hashing import block_hashes, infer_hash_block_size

G16 = BlockGeometry.uniform(16)


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
    assert block_hashes(tokens, BlockGeometry.uniform(block_size)) == _vllm_hashes(tokens, block_size)


def test_prefix_property_and_partial_block():
    tokens = list(range(100))
    full = block_hashes(tokens, G16)
    assert len(full) == 6  # 96 tokens in full blocks; the last 4 are not cacheable
    assert block_hashes(tokens[:50], G16) == full[:3]
    changed = block_hashes([*tokens[:20], 999, *tokens[21:]], G16)
    assert changed[0] == full[0] and changed[1] != full[1]


def test_rejects_bad_block_size():
    with pytest.raises(ValueError):
        BlockGeometry.uniform(0)


def test_group_blocks_are_vllms_larger_block_view():
    """A KV group paged in 4x blocks is named by every 4th chain hash (vLLM's BlockHashListWithBlockSize)."""
    from vllm.v1.core.kv_cache_utils import BlockHash as VllmBlockHash
    from vllm.v1.core.kv_cache_utils import BlockHashListWithBlockSize, maybe_convert_block_hash

    rng = random.Random(1)
    tokens = [rng.randrange(262144) for _ in range(300)]
    fine = block_hashes(tokens, G16)
    raw = [VllmBlockHash(h.to_bytes(32, "big")) for h in fine]  # external form survives the round trip
    view = BlockHashListWithBlockSize(raw, 16, 64)
    expected = [maybe_convert_block_hash(view[i]) & ((1 << 64) - 1) for i in range(len(view))]
    assert block_hashes(tokens, BlockGeometry(16, 64, 64)) == expected
    assert len(expected) == 300 // 64


def test_infers_the_hashing_block_size_from_an_event():
    tokens = list(range(1000, 1600))
    event_hashes = block_hashes(tokens, BlockGeometry(32, 256, 256))
    assert infer_hash_block_size(tokens, 256, event_hashes) == 32
    assert infer_hash_block_size(tokens, 256, [12345]) is None
    with pytest.raises(ValueError):
        BlockGeometry(32, 48, 48)


def test_alignment_hashes_only_whole_cache_units():
    tokens = list(range(1458))
    aligned = block_hashes(tokens, BlockGeometry(32, 32, 512))
    assert len(aligned) == 1024 // 32
    assert aligned == block_hashes(tokens, BlockGeometry.uniform(32))[:32]


def test_max_blocks_hashes_only_the_leading_blocks():
    tokens = list(range(2000))
    assert block_hashes(tokens, G16, max_blocks=10) == block_hashes(tokens, G16)[:10]


def test_memoised_hasher_equals_block_hashes_and_stays_bounded():
    from routing.hashing import BlockHasher

    rng = random.Random(5)
    system = [rng.randrange(262144) for _ in range(300)]
    hasher = BlockHasher(capacity=40)
    for _ in range(5):
        prompt = system + [rng.randrange(262144) for _ in range(rng.randrange(0, 200))]
        for geometry, max_blocks in ((G16, None), (BlockGeometry(16, 64, 64), None), (BlockGeometry(16, 64, 128), 5)):
            assert hasher.hashes(prompt, geometry, max_blocks) == block_hashes(prompt, geometry, max_blocks)
        assert len(hasher._memo) <= 40
    with pytest.raises(ValueError):
        BlockHasher(capacity=0)
