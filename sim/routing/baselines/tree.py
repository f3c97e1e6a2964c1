"""The anchors' approximate multi-tenant radix tree, at KV-block granularity.

SGLang's ``policies/tree.rs`` and Ray's ``prefix_aware/prefix_tree.py`` keep one radix tree of the
prompts each router sent, every node tagged with the tenants (replicas) that were sent through it and
when, a per-tenant size, and LRU eviction of a tenant's leaves. Both walk characters; here the edges
are vLLM block hashes. Because a block hash is chained (it names its whole prefix), a node is just its
hash, and the tree is a map ``hash -> {tenant: last access}``. A path is touched leaf first, so a
tenant's ancestors are always newer than their descendants and LRU eviction takes leaves before the
nodes they hang from, as the anchors' leaf-only eviction does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

from routing.hashing import BlockHash


class BlockTree:
    """Invariant: ``tenant in _holders[h]`` iff ``h in _lru[tenant]``."""

    def __init__(self) -> None:
        self._holders: dict[BlockHash, dict[str, float]] = {}
        self._lru: dict[str, OrderedDict[BlockHash, None]] = {}

    def insert(self, tenant: str, hashes: Sequence[BlockHash], now: float) -> None:
        lru = self._lru.setdefault(tenant, OrderedDict())
        for h in reversed(hashes):
            self._holders.setdefault(h, {})[tenant] = now
            lru[h] = None
            lru.move_to_end(h)

    def match(self, hashes: Sequence[BlockHash], tenants: Collection[str]) -> tuple[int, dict[str, float]]:
        """Deepest leading block some of ``tenants`` hold, and its holders among them with their access times."""
        depth, deepest = 0, {}
        for h in hashes:
            holders = self._holders.get(h)
            if not holders:
                break
            holders = {t: at for t, at in holders.items() if t in tenants}
            if not holders:
                break
            depth, deepest = depth + 1, holders
        return depth, deepest

    def size(self, tenant: str) -> int:
        """Blocks the tree attributes to ``tenant`` (the anchors' per-tenant character count)."""
        return len(self._lru.get(tenant, ()))

    def evict(self, tenant: str, keep_blocks: int) -> None:
        """Drop ``tenant``'s least recently used blocks until it holds at most ``keep_blocks``."""
        lru = self._lru.get(tenant)
        while lru and len(lru) > keep_blocks:
            h, _ = lru.popitem(last=False)
            self._forget(h, tenant)

    def remove_tenant(self, tenant: str) -> None:
        for h in self._lru.pop(tenant, OrderedDict()):
            self._forget(h, tenant)

    def tenants(self) -> list[str]:
        return list(self._lru)

    def _forget(self, h: BlockHash, tenant: str) -> None:
        holders = self._holders[h]
        del holders[tenant]
        if not holders:
            del self._holders[h]
