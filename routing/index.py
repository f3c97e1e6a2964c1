"""Which replica holds which prompt blocks: a hash -> replicas map with an LRU bound per replica.

A replica's entries come from two sources: what the router itself sent there (recorded at routing
time, so a burst of requests sharing a prefix follows the first before any engine reports back) and,
in precise mode, the engine's KV events (stored / removed / all cleared). Each replica's entries are
bounded by ``capacity_blocks``, oldest-used first out, mirroring the engine's LRU eviction, so the
index's memory is bounded by ``replicas x capacity_blocks`` whatever the traffic.

A prefix only helps when it is held from the first block on (vLLM matches consecutive blocks from
the start), so :meth:`PrefixIndex.match` counts leading blocks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from routing.hashing import BlockHash


class PrefixIndex:
    """Invariant: ``r in _owners[h]`` iff ``h in _lru[r]``; ``len(_lru[r]) <= capacity_blocks``."""

    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks <= 0:
            raise ValueError("capacity_blocks must be positive")
        self.capacity_blocks = capacity_blocks
        self._owners: dict[BlockHash, set[str]] = {}
        self._lru: dict[str, OrderedDict[BlockHash, None]] = {}

    def match(self, hashes: Sequence[BlockHash]) -> dict[str, int]:
        """Leading blocks of ``hashes`` each replica holds (replicas holding none are absent).

        O(blocks + replicas): a replica's depth is written once, when it drops out of the run.
        """
        held: dict[str, int] = {}
        alive: set[str] = set()
        depth = 0
        for depth, h in enumerate(hashes):
            owners = self._owners.get(h)
            if not owners:
                break
            if depth == 0:
                alive = set(owners)
            elif not owners >= alive:
                for replica in alive - owners:
                    held[replica] = depth
                alive &= owners
                if not alive:
                    break
        else:
            depth = len(hashes)
        for replica in alive:
            held[replica] = depth
        return held

    def held_by(self, replica: str, hashes: Sequence[BlockHash]) -> int:
        """Leading blocks of ``hashes`` that ``replica`` holds: one lookup per matched block, no owner sets."""
        lru = self._lru.get(replica)
        if not lru:
            return 0
        for depth, h in enumerate(hashes):
            if h not in lru:
                return depth
        return len(hashes)

    def insert(self, replica: str, hashes: Iterable[BlockHash]) -> None:
        """Mark ``hashes`` as held by ``replica`` (most recently used), evicting its oldest beyond capacity.

        Tail first, so a prompt's first block is its most recently used: the index then forgets a
        prefix from its end, as vLLM frees a request's blocks (a prefix without its head matches nothing).
        """
        lru = self._lru.setdefault(replica, OrderedDict())
        for h in reversed(list(hashes)):
            if h in lru:
                lru.move_to_end(h)
                continue
            lru[h] = None
            self._owners.setdefault(h, set()).add(replica)
        while len(lru) > self.capacity_blocks:
            old, _ = lru.popitem(last=False)
            self._forget(old, replica)

    def remove(self, replica: str, hashes: Iterable[BlockHash]) -> None:
        lru = self._lru.get(replica)
        if lru is None:
            return
        for h in hashes:
            if lru.pop(h, 0) is None:
                self._forget(h, replica)

    def drop_replica(self, replica: str) -> None:
        for h in self._lru.pop(replica, OrderedDict()):
            self._forget(h, replica)

    def blocks_held(self, replica: str) -> int:
        return len(self._lru.get(replica, ()))

    def size_blocks(self) -> int:
        """Total (replica, block) entries: the index's memory in entries."""
        return sum(len(lru) for lru in self._lru.values())

    def replicas(self) -> list[str]:
        return list(self._lru)

    def _forget(self, h: BlockHash, replica: str) -> None:
        owners = self._owners.get(h)
        if owners is not None:
            owners.discard(replica)
            if not owners:
                del self._owners[h]
