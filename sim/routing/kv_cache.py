"""A replica's KV blocks as vLLM's prefix cache keeps them: pinned while used, then evictable LRU.

* A request is admitted only when its prompt and output blocks fit; the blocks of its prompt that are
  already cached (leading blocks only, at most ``(prompt_tokens - 1) // block_size``, as vLLM counts
  hits) are pinned, the rest are allocated, evicting the least recently freed cached blocks.
* As prefill chunks are scheduled their full blocks are registered under their hash (vLLM caches a
  block when it allocates it for computation, so a sibling scheduled later in the same step hits it);
  a hash already cached stays a private duplicate, as in vLLM.
* On finish the request's hashed blocks are unpinned in reverse order, so a prompt's tail is evicted
  before its head; output blocks are freed outright (Gemma-4's template drops earlier turns' thinking,
  so generated tokens rarely come back verbatim in the next prompt).
* Every registration and eviction is logged, in order, for the engine's KV events (precise routing).

Invariant: ``pinned + evictable + private + free == capacity_blocks``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from routing.hashing import BlockHash


class KvCache:
    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks}")
        self.capacity_blocks = capacity_blocks
        self._refs: dict[BlockHash, int] = {}  # hashed blocks held, pinned (refs > 0) or evictable (0)
        self._evictable: OrderedDict[BlockHash, None] = OrderedDict()  # refs == 0, first out first
        self._private = 0  # allocated blocks without a hash: prompt not yet computed, duplicates, output
        self._log: list[tuple[bool, BlockHash]] = []  # (is_stored, hash) since the last drain

    def cached_prefix(self, hashes: Sequence[BlockHash], max_blocks: int) -> int:
        """Leading blocks of ``hashes`` held (pinned or evictable), at most ``max_blocks``."""
        n = 0
        refs = self._refs
        for h in hashes[:max_blocks]:
            if h not in refs:
                break
            n += 1
        return n

    def free_blocks(self) -> int:
        return self.capacity_blocks - len(self._refs) - self._private

    def can_admit(self, hits: Sequence[BlockHash], new_blocks: int) -> bool:
        """Whether ``new_blocks`` fit once the ``hits`` are pinned (evicting what is evictable)."""
        reclaimable = len(self._evictable) - sum(1 for h in hits if self._refs[h] == 0)
        return self.free_blocks() + reclaimable >= new_blocks

    def admit(self, hits: Sequence[BlockHash], new_blocks: int) -> None:
        """Pin the hit blocks and allocate ``new_blocks`` private ones; the caller checked ``can_admit``."""
        for h in hits:
            if self._refs[h] == 0:
                del self._evictable[h]
            self._refs[h] += 1
        shortfall = new_blocks - self.free_blocks()
        for _ in range(shortfall):
            h, _ = self._evictable.popitem(last=False)
            del self._refs[h]
            self._log.append((False, h))
        self._private += new_blocks

    def register(self, hashes: Sequence[BlockHash]) -> list[BlockHash]:
        """Give the caller's private blocks these hashes, in order; returns those registered.

        A hash cached already (by another request) is skipped: that block stays a private duplicate.
        """
        refs, log = self._refs, self._log
        done = []
        for h in hashes:
            if h not in refs:
                refs[h] = 1
                log.append((True, h))
                done.append(h)
        self._private -= len(done)
        return done

    def release(self, registered: Sequence[BlockHash], private_blocks: int) -> None:
        """A request finished: unpin its registered blocks (tail first out) and free its private ones."""
        refs, evictable = self._refs, self._evictable
        for h in reversed(registered):
            refs[h] -= 1
            if not refs[h]:
                evictable[h] = None
        self._private -= private_blocks

    def usage(self) -> float:
        """Share of blocks used by running requests (vLLM's kv_cache_usage: evictable blocks count as free)."""
        return (len(self._refs) - len(self._evictable) + self._private) / self.capacity_blocks

    def held(self) -> set[BlockHash]:
        """Every hashed block held, pinned or evictable: what a ReplicaSnapshot event would carry."""
        return set(self._refs)

    def drain_log(self) -> list[tuple[bool, BlockHash]]:
        """Stores and evictions since the last call, in order."""
        log, self._log = self._log, []
        return log
