"""SGLang's ``cache_aware`` algorithm (sgl-model-gateway ``src/policies/cache_aware.rs`` + ``tree.rs``).

1. Loads are the router's own in-flight counts. The cluster is imbalanced when
   ``max - min > balance_abs_threshold`` AND ``max > balance_rel_threshold * min`` (the code's AND; the
   docs say OR): then the least-loaded worker takes the request.
2. Otherwise match the prompt against the approximate tree of routed prompts (all workers):
   ``match_rate = matched / prompt``. Above ``cache_threshold`` the request goes to a worker holding the
   deepest matched node; otherwise to the least-loaded worker (the newer gateway; the old router took
   the smallest tree).
3. Every decision, imbalanced or not, inserts the prompt for the chosen worker; every
   ``eviction_interval_s`` each worker's part of the tree is trimmed to ``max_tree_size``.

Differences from SGLang, all deliberate: the tree is over vLLM block hashes rather than raw text (see
``ray_prefix``); among the holders of the deepest node the most recently used wins (SGLang takes the
first key of a concurrent map, i.e. an arbitrary holder; the recent one is the better guess, and is
deterministic); the match does not refresh access times (``choose`` must not mutate — the insert right
after refreshes the chosen path anyway); ties on load go to the first replica, as ``min_by_key`` does;
and a full replica passes the request to the next least loaded (SGLang workers queue without limit,
Serve's replicas take at most ``max_ongoing_requests``).

Defaults are the gateway CLI's: ``cache_threshold=0.3``, ``balance_abs_threshold=64``,
``balance_rel_threshold=1.5``, ``eviction_interval_s=120``, ``max_tree_size`` 2^26 characters (2^20
blocks at 4 characters per token). With 64-request replicas the load spread can never exceed 64, so
step 1 never fires: the load guard left is Serve's capacity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from routing.events import KvEvent
from routing.policy import Decision, ReplicaLoad, RouteRequest
from sim.routing.baselines.tree import BlockTree


@dataclass(frozen=True, slots=True)
class SglangCacheAwareConfig:
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    eviction_interval_s: float = 120.0
    max_tree_blocks: int = 2**26 // 4 // 16


class SglangCacheAwarePolicy:
    name: ClassVar[str] = "sglang_cache_aware"

    def __init__(self, clock: Callable[[], float], config: SglangCacheAwareConfig | None = None) -> None:
        self.config = config or SglangCacheAwareConfig()
        self.tree = BlockTree()
        self._clock = clock
        self._next_eviction_s = self.config.eviction_interval_s

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        cfg = self.config
        by_load = sorted(range(len(replicas)), key=lambda i: (replicas[i].in_flight, i))
        lo, hi = replicas[by_load[0]].in_flight, replicas[by_load[-1]].in_flight
        order = [replicas[i].replica_id for i in by_load]
        if hi - lo > cfg.balance_abs_threshold and hi > cfg.balance_rel_threshold * lo:
            return Decision(ranked=tuple((r,) for r in order), reason="imbalance")
        depth, holders = self.tree.match(request.block_hashes, set(order))
        if depth / max(1, len(request.block_hashes)) > cfg.cache_threshold:
            target = max(holders, key=lambda r: (holders[r], r))
            order.remove(target)
            return Decision(ranked=((target,), *((r,) for r in order)), reason="prefix", matched_blocks=depth)
        return Decision(ranked=tuple((r,) for r in order), reason="cold")

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        now = self._clock()
        self.tree.insert(replica_id, request.block_hashes, now)
        if self.config.eviction_interval_s > 0 and now >= self._next_eviction_s:
            self._next_eviction_s = now + self.config.eviction_interval_s
            for tenant in self.tree.tenants():
                self.tree.evict(tenant, self.config.max_tree_blocks)

    def on_replica_removed(self, replica_id: str) -> None:
        self.tree.remove_tenant(replica_id)

    def observe(self, event: KvEvent) -> None:
        """Approximate: SGLang's tree never hears from the engines."""
