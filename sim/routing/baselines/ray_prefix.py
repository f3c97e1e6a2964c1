"""Ray Serve's ``PrefixCacheAffinityRouter`` (ray 2.60, ``routing_policies/prefix_aware/``), on Ray's own tree.

The prefix tree is upstream's ``PrefixTree`` (imported from the installed ray: no copy). The decision is
``PrefixCacheAffinityRouter._prefix_match_best_replicas`` step by step:

1. queue lengths of the candidates; if ``max - min > imbalanced_threshold`` Ray falls back to power of two
   choices (two random replicas);
2. otherwise ``prefix_match`` of the prompt against the tree over the candidates:
   ``match_rate = len(matched) / len(prompt)``; below ``match_rate_threshold`` the candidates are
   ``get_smallest_tenants()``, otherwise the tenants holding the match;
3. Serve takes the candidate with the shortest queue. ``on_request_routed`` inserts the prompt for the
   chosen replica; with ``do_eviction`` the tree's eviction loop trims, every ``eviction_interval_s``, each
   tenant above ``eviction_threshold`` down to ``eviction_target`` (run here on the simulated clock).

What differs from Ray, deliberately: the tree's "text" is the prompt's vLLM block hashes, each written as
:data:`CHARS_PER_BLOCK` characters (60 of its bits: exact for the simulator's prompts, which are token ids;
a partial block gives vLLM no hit anyway, so the match rate is the reusable share — Ray's character rate
over the messages' ``content`` ignores the chat template); queue lengths are the router's in-flight counts
(Ray probes the replicas, which count the same requests); and when every candidate is full the other
replicas follow, least loaded first (Ray backs off and routes again).

Defaults are Ray's shipped ones (``imbalanced_threshold=inf``: pure affinity, ``match_rate_threshold=0.1``,
``do_eviction=False``, eviction at 400k / 360k characters, which at Ray's ~4 characters per token and
16-token blocks are 6,250 / 5,625 blocks).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from routing.events import KvEvent
from routing.hashing import BlockHash
from routing.policy import Decision, ReplicaLoad, RouteRequest

CHARS_PER_BLOCK = 4  # 15 bits each, in the CJK block: no surrogates, no combining marks
_CHAR_BITS = 15
_CHAR_BASE = 0x4E00
RAY_CHARS_PER_BLOCK = 4 * 16  # what Ray's character budgets mean in blocks: ~4 characters per token


def block_text(hashes: Sequence[BlockHash]) -> str:
    """The prompt as Ray's tree sees it: each block hash as :data:`CHARS_PER_BLOCK` characters."""
    mask = (1 << _CHAR_BITS) - 1
    return "".join(chr(_CHAR_BASE + ((h >> (_CHAR_BITS * i)) & mask)) for h in hashes for i in range(CHARS_PER_BLOCK))


@dataclass(frozen=True, slots=True)
class RayPrefixConfig:
    """``PrefixCacheAffinityRouter.initialize_state``'s arguments, at Ray 2.60's defaults."""

    imbalanced_threshold: float = math.inf
    match_rate_threshold: float = 0.1
    do_eviction: bool = False
    eviction_threshold_chars: int = 400_000
    eviction_target_chars: int = 360_000
    eviction_interval_s: float = 10.0


class RayPrefixPolicy:
    name: ClassVar[str] = "ray_prefix"

    def __init__(self, clock: Callable[[], float], config: RayPrefixConfig | None = None, seed: int = 0) -> None:
        from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree

        self.config = config or RayPrefixConfig()
        self.tree = PrefixTree()
        self._clock = clock
        self._rng = random.Random(seed)
        self._next_eviction_s = self.config.eviction_interval_s
        scale = CHARS_PER_BLOCK / RAY_CHARS_PER_BLOCK  # Ray's character budgets in this tree's characters
        self._evict_above = round(self.config.eviction_threshold_chars * scale)
        self._evict_to = round(self.config.eviction_target_chars * scale)

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        cfg = self.config
        queue = {r.replica_id: r.in_flight for r in replicas}
        self.tree.add_tenants([r for r in queue if r not in self.tree.tenant_to_char_count], self._clock())
        if max(queue.values()) - min(queue.values()) > cfg.imbalanced_threshold:
            return self._ranked(self._pow2(queue), queue, "imbalance", 0)
        text = block_text(request.block_hashes)
        matched, tenants = self.tree.prefix_match(text, list(queue))
        if not text or len(matched) / len(text) < cfg.match_rate_threshold:
            smallest = [t for t in self.tree.get_smallest_tenants() or () if t in queue]
            return self._ranked(smallest or self._pow2(queue), queue, "cold", 0)
        return self._ranked(tenants or self._pow2(queue), queue, "prefix", len(matched) // CHARS_PER_BLOCK)

    def _pow2(self, queue: dict[str, int]) -> list[str]:
        return self._rng.sample(list(queue), k=min(2, len(queue)))

    @staticmethod
    def _ranked(candidates: list[str], queue: dict[str, int], reason: str, depth: int) -> Decision:
        """Serve's pick: the candidates (shortest queue first), then, full or not, everyone else."""
        chosen = set(candidates)
        first = sorted(chosen, key=lambda r: (queue[r], r))
        rest = sorted((r for r in queue if r not in chosen), key=lambda r: (queue[r], r))
        return Decision(ranked=(tuple(first), *((r,) for r in rest)), reason=reason, matched_blocks=depth)

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        now = self._clock()
        self.tree.add_tenants([replica_id] if replica_id not in self.tree.tenant_to_char_count else [], now)
        self.tree.insert(block_text(request.block_hashes), replica_id, now)
        if self.config.do_eviction and now >= self._next_eviction_s:
            self._next_eviction_s = now + self.config.eviction_interval_s
            for tenant, chars in list(self.tree.tenant_to_char_count.items()):
                if chars > self._evict_above:
                    self.tree.evict_tenant_by_lru(tenant, chars - self._evict_to)

    def on_replica_removed(self, replica_id: str) -> None:
        self.tree.remove_tenants([replica_id])

    def observe(self, event: KvEvent) -> None:
        """Approximate: Ray's tree never hears from the engines."""

    def index_size(self) -> int:
        return sum(self.tree.tenant_to_char_count.values()) // CHARS_PER_BLOCK
