"""Prompt block hashes, computed exactly as vLLM's prefix cache computes them.

vLLM (``v1/core/kv_cache_utils.py``) splits a prompt into full blocks of ``block_size`` tokens and
chains them: ``hash_i = H((hash_{i-1} or NONE_HASH, tuple(block_i), extra_keys))`` with
``H = sha256(pickle(x))`` by default and ``NONE_HASH = H("vllm-none-hash")`` (unless
``PYTHONHASHSEED`` is set). KV events carry the low 64 bits of each digest, big-endian, as ints.
Using the same function lets the router's index meet the engines' events hash for hash; the router
hashes each prompt once and every policy reuses the result.

Hybrid models (Gemma-4: sliding-window and full-attention layers) may page a KV group in blocks
larger than the hashing block: vLLM then names a group block by the chain hash at its last hashing
boundary (``BlockHashListWithBlockSize``), which :func:`block_hashes` reproduces from the engine's
:class:`~contracts.engine_report.BlockGeometry`. :func:`infer_hash_block_size` recovers the hashing
block size from one KV event, since only the engine core process knows it.

Only plain text prompts are hashed: requests with a LoRA, multimodal input or a cache salt carry
``extra_keys`` in vLLM and are routed as cold (their hashes would never match).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable, Sequence
from typing import NewType

from contracts.engine_report import BlockGeometry

BlockHash = NewType("BlockHash", int)
"""The external form of a vLLM block hash: the digest's low 64 bits, as in KV events."""

DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
_MASK_64 = (1 << 64) - 1


def _sha256(value: object) -> bytes:
    return hashlib.sha256(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)).digest()


def none_hash(seed: str = DEFAULT_NONE_HASH_SEED) -> bytes:
    """The parent hash of a prompt's first block."""
    return _sha256(seed)


def block_hashes(
    token_ids: Sequence[int],
    geometry: BlockGeometry,
    max_blocks: int | None = None,
    seed: str = DEFAULT_NONE_HASH_SEED,
) -> list[BlockHash]:
    """External hashes of the prompt's full blocks of the followed KV group, in order.

    The chain runs over hashing blocks (``geometry.block_size``); a group block is named by the chain
    hash at its end. Only the prompt's first multiple of ``geometry.align_tokens`` is hashed: a hybrid
    model's engine caches (and reuses) prompts in units of the least common multiple of its groups'
    block sizes, so blocks past that boundary are never stored, and a trailing partial block never is.
    ``max_blocks`` stops after that many group blocks: routing needs a prompt's leading blocks, and
    this bounds its cost.
    """
    return _chain(token_ids, geometry, max_blocks, none_hash(seed), _step)


def _step(parent: bytes, block: tuple[int, ...]) -> bytes:
    return _sha256((parent, block, None))


def _chain(
    token_ids: Sequence[int],
    geometry: BlockGeometry,
    max_blocks: int | None,
    parent: bytes,
    step: Callable[[bytes, tuple[int, ...]], bytes],
) -> list[BlockHash]:
    block_size = geometry.block_size
    scale = geometry.group_block_size // block_size
    end = len(token_ids) // geometry.align_tokens * geometry.align_tokens
    out: list[BlockHash] = []
    for i, start in enumerate(range(0, end - block_size + 1, block_size), start=1):
        parent = step(parent, tuple(token_ids[start : start + block_size]))
        if i % scale == 0:
            out.append(BlockHash(int.from_bytes(parent, "big") & _MASK_64))
            if max_blocks is not None and len(out) >= max_blocks:
                break
    return out


class BlockHasher:
    """:func:`block_hashes` with a bounded memo of chain steps.

    Most of a prompt is usually a prefix some earlier request had (a shared system prompt, the
    conversation's previous turns); its blocks then cost a dict lookup instead of pickle + SHA-256,
    which is most of a routing decision's cost for long prompts. The memo keeps at most ``capacity``
    steps, oldest first out (about 0.3 KB each).
    """

    def __init__(self, capacity: int = 65536, seed: str = DEFAULT_NONE_HASH_SEED) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._root = none_hash(seed)
        self._memo: dict[tuple[bytes, tuple[int, ...]], bytes] = {}

    def hashes(
        self, token_ids: Sequence[int], geometry: BlockGeometry, max_blocks: int | None = None
    ) -> list[BlockHash]:
        return _chain(token_ids, geometry, max_blocks, self._root, self._step)

    def _step(self, parent: bytes, block: tuple[int, ...]) -> bytes:
        key = (parent, block)
        digest = self._memo.get(key)
        if digest is None:
            digest = self._memo[key] = _step(parent, block)
            if len(self._memo) > self.capacity:
                del self._memo[next(iter(self._memo))]
        return digest


def infer_hash_block_size(
    token_ids: Sequence[int], group_block_size: int, hashes: Sequence[int], seed: str = DEFAULT_NONE_HASH_SEED
) -> int | None:
    """The hashing block size that turns a prompt's first blocks into ``hashes`` (from a KV event whose
    blocks start at token 0), or None if no divisor of ``group_block_size`` does."""
    if not hashes:
        return None
    for size in sorted(d for d in range(1, group_block_size + 1) if group_block_size % d == 0):
        geometry = BlockGeometry(size, group_block_size, group_block_size)
        if block_hashes(token_ids, geometry, seed=seed)[: len(hashes)] == list(hashes):
            return size
    return None
