"""SGLang's ``cache_aware`` algorithm as the gateway ships it (``smg`` 1.13.0, ``model_gateway/src/policies/``).

1. Workers whose last load report shows them overloaded (``waiting`` at or above 8 requests, or KV usage at or
   above 0.8: worker overload protection, on by default) are left out while another worker is under both; when
   every worker is over, all stay in.
2. Match the prompt against the approximate tree of routed prompts: ``match_rate = matched / prompt``. Above
   ``cache_threshold`` the request goes to the least-loaded holder of the deepest matched node
   (``select_matched_candidate``), unless the spill gate trips (``gate_selected_candidate``): the holder's load
   exceeds ``balance_rel_threshold`` x the mean load AND the mean plus a margin, ``balance_abs_threshold``
   capped at the in-flight count's natural swing at the mean, ``max(4, ceil(2 sqrt(mean)))`` (never under four
   unless the threshold is lower). Then, and at or below the threshold, the least-loaded worker takes it.
3. Ties on load are broken uniformly at random (``least_load.rs``, ``argmax_with_random_ties``): here by a seeded
   generator, so a run is reproducible.
4. Every decision inserts the prompt for the chosen worker; every ``eviction_interval_s`` each worker's part of
   the tree is trimmed to ``max_tree_size``.

``tests/integration/test_smg_replay.py`` replays traces through the real ``smg`` binary and this model and
compares every decision (loads from the gateway's own in-flight counts, as here). Older gateways balanced on a
fleet-wide rule instead of step 2's gate (``max - min > balance_abs_threshold`` and ``max > rel x min``), took
an arbitrary holder and sent ties to the first worker: a model of those herded hot prefixes onto one replica
that the shipped gateway spreads after about four requests above the mean.

Differences from the gateway, all deliberate: the tree is over vLLM block hashes rather than raw text (see
``ray_prefix``); loads are the router's in-flight counts (with real vLLM engines smg also reads their load
reports, and ranks misses by expected wait from queued tokens: not modelled); its warm-up slice, which sends a
share of misses to workers that joined in the last 60 s, is left out (the simulated fleet is fixed); the match
does not refresh access times (``choose`` must not mutate — the insert right after refreshes the chosen path
anyway); and a full replica passes the request to the next least loaded (SGLang workers queue without limit,
Serve's replicas take at most ``max_ongoing_requests``).

Defaults are the gateway CLI's: ``cache_threshold=0.3``, ``balance_abs_threshold=64``,
``balance_rel_threshold=1.5``, ``eviction_interval_s=120``, ``max_tree_size`` 2^26 characters (2^20 blocks at 4
characters per token), overload at 8 waiting requests or 0.8 KV usage.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import ClassVar

from routing.events import KvEvent
from routing.policy import Decision, ReplicaLoad, RouteRequest
from sim.routing.baselines.tree import BlockTree

# Worker overload protection's defaults (a worker at or above either is left out while another is under both), and
# the spill gate's smallest margin.
OVERLOAD_WAITING, OVERLOAD_KV_USAGE = 8, 0.8
SPILL_MIN_MARGIN = 4


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
        self._ties = random.Random(0)

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        cfg = self.config
        mean = sum(r.in_flight for r in replicas) / len(replicas)
        healthy = [r for r in replicas if not self._overloaded(r)] or list(replicas)
        load = {r.replica_id: r.in_flight for r in healthy}
        depth, holders = self.tree.match(request.block_hashes, set(load))
        reason, matched = "cold", 0
        if depth / max(1, len(request.block_hashes)) > cfg.cache_threshold:
            target = self._least_loaded(holders, load)
            if self._spills(load[target], mean):
                reason, target = "spill", self._least_loaded(load, load)
            else:
                reason, matched = "prefix", depth
        else:
            target = self._least_loaded(load, load)
        rest = sorted((r for r in replicas if r.replica_id != target), key=lambda r: r.in_flight)
        return Decision(ranked=((target,), *((r.replica_id,) for r in rest)), reason=reason, matched_blocks=matched)

    def _overloaded(self, replica: ReplicaLoad) -> bool:
        return replica.waiting >= OVERLOAD_WAITING or replica.kv_usage >= OVERLOAD_KV_USAGE

    def _least_loaded(self, candidates: Collection[str], load: dict[str, int]) -> str:
        """The least loaded of ``candidates``, ties broken at random (in the order given: reproducible)."""
        lowest = min(load[r] for r in candidates)
        return self._ties.choice([r for r in candidates if load[r] == lowest])

    def _spills(self, holder_load: int, mean: float) -> bool:
        """The gate: the holder is busier than ``rel`` x the mean and than the mean plus the capped margin."""
        cfg = self.config
        margin = min(cfg.balance_abs_threshold, max(SPILL_MIN_MARGIN, math.ceil(2 * math.sqrt(mean))))
        return holder_load > cfg.balance_rel_threshold * mean and holder_load > mean + margin

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
