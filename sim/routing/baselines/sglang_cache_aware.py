"""SGLang's ``cache_aware`` algorithm as the gateway ships it (``smg`` 1.13.0, ``model_gateway/src/policies/``).

This is the gateway in front of vLLM's OpenAI servers over HTTP, as the real-engine benchmark runs it: the
approximate text tree (``select_worker_with_text``), not the event-driven mode (gRPC with KV events).

1. **Load reports.** Every ``load_monitor_interval_s`` the gateway scrapes each engine's ``/metrics``
   (``fetch_http_load_vllm``): requests running and waiting, and KV usage. Between polls it credits every worker
   with the requests it sent there since the last poll (``SincePollDispatch``; vLLM's scrape carries no sample
   time, so a poll resets the credit).
2. **Eligibility.** Workers whose last report shows them overloaded (``waiting`` at or above 8 requests, or KV
   usage at or above 0.8: worker overload protection, on by default) are left out. When every worker is over,
   the policy is not asked: the request goes to the least loaded worker (live in-flight count, ties at random;
   ``fallback_if_all_vetoed``) and nothing is recorded in the tree. The mean load of the eligible workers (the
   gateway's own in-flight counts) feeds the spill gate.
3. **Match.** The prompt against the approximate tree of routed prompts: ``match_rate = matched / prompt``.
   Above ``cache_threshold`` the candidates are the eligible workers holding the deepest match
   (``select_matched_candidate``); the ones the spill gate lets through (``select_final_from_affinity``) go to
   step 4. The gate trips for a holder whose load exceeds ``balance_rel_threshold`` x the mean AND the mean plus a
   margin, ``balance_abs_threshold`` capped at the in-flight count's natural swing at the mean,
   ``max(4, ceil(2 sqrt(mean)))`` (never under four unless the threshold is lower). When it trips for every
   holder, the candidates are the eligible workers it does not trip for (all of them if none). At or below the
   threshold, or with no eligible holder of the deepest match, the candidates are every eligible worker.
4. **Expected wait** (``least_load.rs``, ``select_min_expected_wait_with_freshness``): the candidate with the
   least ``(queued + running + unaccounted + dispatched since the poll) x mean_prefill_tokens / throughput +
   kv_pressure_weight x k / (1 - k)``, k the reported KV usage. A vLLM scrape has no token counts and no
   throughput, so each request is priced at the mean prefill (1,024 tokens) and drained at the default 2,000
   tokens/s; "unaccounted" floors the reported and credited requests at the gateway's live in-flight count, so
   the count term is ``max(reported + since_poll, in_flight)``: completions since the last poll go unseen until
   the next one. A worker without a report while others report is scored as the best reporting one plus its own
   in-flight at the same price; with no report from any (a dark fleet: engines with no ``/metrics``) the score
   is the live in-flight count. Scores within 1e-6 tie and are drawn from uniformly (here by a seeded generator,
   so a run is reproducible).
5. Every decision inserts the prompt for the chosen worker; every ``eviction_interval_s`` each worker's part of
   the tree is trimmed to ``max_tree_size``.

``tests/integration/test_smg_replay.py`` replays traces through the real ``smg`` binary and this model and
compares every decision, with engines that report loads and with engines that do not. Older gateways balanced on
a fleet-wide rule instead of step 3's gate (``max - min > balance_abs_threshold`` and ``max > rel x min``), took
an arbitrary holder and sent ties to the first worker: a model of those herded hot prefixes onto one replica
that the shipped gateway spreads after about four requests above the mean.

Not in this path: the warm-up slice and divert (a share of misses, and of shallow hits, sent to workers that
joined recently or hold less than the fleet) run only in the event-driven mode; the fleet-wide KV-pressure
fallback and the waiting-prefill decay are off at the gateway's defaults.

Differences from the gateway, all deliberate: the tree is over vLLM block hashes rather than raw text (see
``ray_prefix``); a poll is taken at the first decision at or after its tick, from the replicas' state as the
router then sees it (the simulated engines' running plus waiting requests are the router's in-flight count:
nothing is in transit), and the credit for a request is recorded when Serve sends it (``on_routed``: ``choose``
takes no side effects beyond the time-driven poll); the match does not refresh access times (the insert right
after refreshes the chosen path anyway); and a full replica passes the request to the next least loaded (SGLang
workers queue without limit, Serve's replicas take at most ``max_ongoing_requests``).

Defaults are the gateway CLI's: ``cache_threshold=0.3``, ``balance_abs_threshold=64``,
``balance_rel_threshold=1.5``, ``eviction_interval_s=120``, ``max_tree_size`` 2^26 characters (2^20 blocks at 4
characters per token), overload at 8 waiting requests or 0.8 KV usage, load polls every 10 s; expected wait's
are ``least_load.rs``'s (``DEFAULT_MEAN_PREFILL_TOKENS``, ``DEFAULT_THROUGHPUT``, ``DEFAULT_KV_PRESSURE_WEIGHT``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
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
# Expected waits this close are one tie (``TIE_EPSILON_SECS``); KV usage is clamped below 1 before k / (1 - k).
TIE_EPSILON_S = 1e-6
KV_USAGE_CLAMP = 0.999


@dataclass(frozen=True, slots=True)
class SglangCacheAwareConfig:
    cache_threshold: float = 0.3
    balance_abs_threshold: int = 64
    balance_rel_threshold: float = 1.5
    eviction_interval_s: float = 120.0
    max_tree_blocks: int = 2**26 // 4 // 16
    # None: the engines give no load reports (a dark fleet), so no overload veto and the expected wait is the
    # live in-flight count.
    load_monitor_interval_s: float | None = 10.0  # --load-monitor-interval (at least 1 s)
    worker_overload_protection: bool = True  # --disable-worker-overload-protection turns it off
    mean_prefill_tokens: int = 1024
    default_throughput: float = 2000.0
    kv_pressure_weight: float = 0.15


@dataclass(frozen=True, slots=True)
class _Report:
    """One worker's part of a poll: what its ``/metrics`` said."""

    requests: int  # running + waiting
    waiting: float
    kv_usage: float


class SglangCacheAwarePolicy:
    name: ClassVar[str] = "sglang_cache_aware"

    def __init__(self, clock: Callable[[], float], config: SglangCacheAwareConfig | None = None) -> None:
        self.config = config or SglangCacheAwareConfig()
        self.tree = BlockTree()
        self._clock = clock
        self._next_eviction_s = self.config.eviction_interval_s
        self._ties = random.Random(0)
        self._reports: dict[str, _Report] = {}
        self._since_poll: Counter[str] = Counter()
        self._next_poll_s = 0.0
        self._bypassed: set[str] = set()  # requests routed around the policy: nothing to record for them

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        cfg = self.config
        self._poll(replicas)
        self._bypassed.discard(request.request_id)
        healthy = [r for r in replicas if not self._overloaded(r.replica_id)]
        if not healthy:
            self._bypassed.add(request.request_id)
            lowest = min(r.in_flight for r in replicas)
            target = self._ties.choice([r.replica_id for r in replicas if r.in_flight == lowest])
            return self._ranked(target, replicas, "overload_fallback", 0)
        load = {r.replica_id: r.in_flight for r in healthy}
        mean = sum(load.values()) / len(load)
        depth, holders = self.tree.match(request.block_hashes, {r.replica_id for r in replicas})
        reason, matched, candidates = "cold", 0, list(load)
        affinity = [r for r in holders if r in load]
        if depth / max(1, len(request.block_hashes)) > cfg.cache_threshold and affinity:
            safe = [r for r in affinity if not self._spills(load[r], mean)]
            if safe:
                reason, matched, candidates = "prefix", depth, safe
            else:
                reason = "spill"
                candidates = [r for r in load if not self._spills(load[r], mean)] or list(load)
        return self._ranked(self._least_expected_wait(candidates, load), replicas, reason, matched)

    @staticmethod
    def _ranked(target: str, replicas: Sequence[ReplicaLoad], reason: str, matched: int) -> Decision:
        """``target`` first, then the others least loaded first (Serve's order when the target is full)."""
        rest = sorted((r for r in replicas if r.replica_id != target), key=lambda r: r.in_flight)
        return Decision(ranked=((target,), *((r.replica_id,) for r in rest)), reason=reason, matched_blocks=matched)

    def _poll(self, replicas: Sequence[ReplicaLoad]) -> None:
        """The load monitor's tick, if one is due: every worker's report, and the credit since the last one reset."""
        interval = self.config.load_monitor_interval_s
        now = self._clock()
        if interval is None or now < self._next_poll_s:
            return
        self._reports = {r.replica_id: _Report(r.in_flight, r.waiting, r.kv_usage) for r in replicas}
        self._since_poll.clear()
        self._next_poll_s += interval * (1 + math.floor((now - self._next_poll_s) / interval))

    def _overloaded(self, replica_id: str) -> bool:
        report = self._reports.get(replica_id)
        if report is None or not self.config.worker_overload_protection:
            return False
        return report.waiting >= OVERLOAD_WAITING or report.kv_usage >= OVERLOAD_KV_USAGE

    def _least_expected_wait(self, candidates: Collection[str], load: dict[str, int]) -> str:
        """The candidate with the least expected wait; ties (within 1e-6) drawn at random, in the order given."""
        cfg = self.config
        price = cfg.mean_prefill_tokens / cfg.default_throughput  # seconds per request of unknown size
        reported = [r for r in candidates if r in self._reports]

        def known(replica_id: str) -> float:
            report = self._reports[replica_id]
            requests = max(report.requests + self._since_poll[replica_id], load[replica_id])
            k = min(max(report.kv_usage, 0.0), KV_USAGE_CLAMP)
            return requests * price + cfg.kv_pressure_weight * k / (1 - k)

        if reported:
            baseline = min(known(r) for r in reported)
            wait = {r: known(r) if r in self._reports else baseline + load[r] * price for r in candidates}
        else:  # a dark fleet: join the shortest queue of live in-flight counts
            wait = {r: float(load[r]) for r in candidates}
        lowest = min(wait.values())
        return self._ties.choice([r for r in candidates if wait[r] - lowest <= TIE_EPSILON_S])

    def _spills(self, holder_load: int, mean: float) -> bool:
        """The gate: the holder is busier than ``rel`` x the mean and than the mean plus the capped margin."""
        cfg = self.config
        margin = min(cfg.balance_abs_threshold, max(SPILL_MIN_MARGIN, math.ceil(2 * math.sqrt(mean))))
        return holder_load > cfg.balance_rel_threshold * mean and holder_load > mean + margin

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        if request.request_id in self._bypassed:
            self._bypassed.discard(request.request_id)
            return
        now = self._clock()
        self.tree.insert(replica_id, request.block_hashes, now)
        if self.config.load_monitor_interval_s is not None:
            self._since_poll[replica_id] += 1
        if self.config.eviction_interval_s > 0 and now >= self._next_eviction_s:
            self._next_eviction_s = now + self.config.eviction_interval_s
            for tenant in self.tree.tenants():
                self.tree.evict(tenant, self.config.max_tree_blocks)

    def on_replica_removed(self, replica_id: str) -> None:
        self.tree.remove_tenant(replica_id)
        self._reports.pop(replica_id, None)
        self._since_poll.pop(replica_id, None)

    def observe(self, event: KvEvent) -> None:
        """Approximate: SGLang's tree never hears from the engines."""
