"""Ray Serve's ``PrefixCacheAffinityRouter`` algorithm (ray 2.60, ``routing_policies/prefix_aware/``).

1. Queue lengths of the candidates; if ``max - min > imbalanced_threshold`` use power of two choices.
2. Otherwise match the prompt against the shared approximate tree of routed prompts:
   ``match_rate = matched / prompt``. Below ``match_rate_threshold`` the candidates are the tenants with
   the smallest tree; otherwise the tenants holding the longest match.
3. Serve takes the candidate with the shortest queue. ``on_request_routed`` inserts the prompt for the
   chosen replica; with ``do_eviction`` a loop every ``eviction_interval_s`` trims each tenant above
   ``eviction_threshold`` down to ``eviction_target``.

Differences from Ray, all deliberate: the tree is over vLLM block hashes rather than message text
(the simulator's prompts are token ids; a partial block gives vLLM no hit anyway, so the match rate is
the reusable share — Ray's character rate over ``content`` strings ignores the chat template); queue
lengths are the router's in-flight counts (Ray probes the replicas, which count the same requests);
and when every candidate is full the other replicas follow, least loaded first (Ray would back off and
retry, and with 64-slot replicas its imbalance test trips first anyway).

Defaults: ``imbalanced_threshold=10`` as documented (ray 2.60's code defaults to inf: pure affinity),
``match_rate_threshold=0.1``, ``do_eviction=False``; the eviction sizes are Ray's 400k / 360k
characters at 4 characters per token and 16 tokens per block.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from routing.events import KvEvent
from routing.policy import Decision, ReplicaLoad, RouteRequest
from sim.routing.baselines.tree import BlockTree


@dataclass(frozen=True, slots=True)
class RayPrefixConfig:
    imbalanced_threshold: float = 10
    match_rate_threshold: float = 0.1
    do_eviction: bool = False
    eviction_threshold_blocks: int = 400_000 // 4 // 16
    eviction_target_blocks: int = 360_000 // 4 // 16
    eviction_interval_s: float = 10.0


class RayPrefixPolicy:
    name: ClassVar[str] = "ray_prefix"

    def __init__(self, clock: Callable[[], float], config: RayPrefixConfig | None = None, seed: int = 0) -> None:
        self.config = config or RayPrefixConfig()
        self.tree = BlockTree()
        self._clock = clock
        self._rng = random.Random(seed)
        self._next_eviction_s = self.config.eviction_interval_s

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        cfg = self.config
        queue = {r.replica_id: r.in_flight for r in replicas}
        if max(queue.values()) - min(queue.values()) > cfg.imbalanced_threshold:
            pair = self._rng.sample(list(queue), k=min(2, len(queue)))
            return self._ranked(pair, queue, "imbalance", 0)
        depth, holders = self.tree.match(request.block_hashes, queue.keys())
        if depth / max(1, len(request.block_hashes)) < cfg.match_rate_threshold:
            smallest = min(self.tree.size(r) for r in queue)
            return self._ranked([r for r in queue if self.tree.size(r) == smallest], queue, "cold", 0)
        return self._ranked(list(holders), queue, "prefix", depth)

    @staticmethod
    def _ranked(candidates: list[str], queue: dict[str, int], reason: str, depth: int) -> Decision:
        """Serve's pick: the candidates (shortest queue first), then, full or not, everyone else."""
        chosen = set(candidates)
        first = sorted(chosen, key=lambda r: (queue[r], r))
        rest = sorted((r for r in queue if r not in chosen), key=lambda r: (queue[r], r))
        return Decision(ranked=(tuple(first), *((r,) for r in rest)), reason=reason, matched_blocks=depth)

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        now = self._clock()
        self.tree.insert(replica_id, request.block_hashes, now)
        cfg = self.config
        if cfg.do_eviction and now >= self._next_eviction_s:
            self._next_eviction_s = now + cfg.eviction_interval_s
            for tenant in self.tree.tenants():
                if self.tree.size(tenant) > cfg.eviction_threshold_blocks:
                    self.tree.evict(tenant, cfg.eviction_target_blocks)

    def on_replica_removed(self, replica_id: str) -> None:
        self.tree.remove_tenant(replica_id)

    def observe(self, event: KvEvent) -> None:
        """Approximate: Ray's tree never hears from the engines."""
