"""What a run measures, over the requests that arrived in its measured window (after the warm-up).

* ``hit_rate`` — prefix-cache hit rate in tokens, as vLLM counts it (hit tokens / prompt tokens at
  admission, summed over replicas).
* ``pooled_hit_rate`` — the pooled-cache reference: the same requests, in arrival order, against ONE
  vLLM-like LRU prefix cache holding the whole cluster's KV (replicas x blocks), as if any replica could
  read any other's cache. It is a reference, not a bound: LRU is not optimal, and a router that keeps
  each prefix on its own replica can protect it from eviction better than one shared LRU does (the
  committed results have ``prefix`` above it by 0.0003).
* ``ttft_*`` — from arrival at the router (queueing there included) to the first token.
* ``throughput_tps`` — output tokens finished inside the window / window length; ``offered_tps`` is what
  the arrivals ask for (rate x mean output), so throughput below it means the cluster is saturated.
* ``load_ratio`` — max / min over replicas of the time-averaged requests in flight (the router's own
  count) during the window: how evenly work is spread (infinite when a replica got nothing; null in
  the JSON).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sim.routing.kv_cache import KvCache
from sim.routing.replica import Job


@dataclass(frozen=True, slots=True)
class RunMetrics:
    requests: int
    hit_rate: float
    pooled_hit_rate: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    throughput_tps: float
    offered_tps: float
    load_ratio: float
    reasons: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in asdict(self).items()}


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, ``q`` in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def pooled_hit_rate(jobs: Sequence[Job], capacity_blocks: int, block_size: int, window: tuple[float, float]) -> float:
    """Hit rate of the jobs inside ``window`` on one shared cache, every job (warm-up too) in arrival order."""
    cache = KvCache(capacity_blocks)
    hit = total = 0
    for job in sorted(jobs, key=lambda j: j.arrival_s):
        turn = job.turn
        hits = cache.cached_prefix(turn.block_hashes, (turn.prompt_tokens - 1) // block_size)
        new = len(turn.block_hashes) - hits
        cache.admit(turn.block_hashes[:hits], new)
        registered = list(turn.block_hashes[:hits]) + cache.register(turn.block_hashes[hits:])
        cache.release(registered, len(turn.block_hashes) - len(registered))
        if window[0] <= job.arrival_s <= window[1]:
            hit += hits * block_size
            total += turn.prompt_tokens
    cache.drain_log()
    return hit / total if total else 0.0


def summarize(
    jobs: Sequence[Job],
    window: tuple[float, float],
    in_flight_area: Sequence[float],
    pooled: float,
    block_size: int,
    offered_tps: float,
) -> RunMetrics:
    start, end = window
    measured = [j for j in jobs if start <= j.arrival_s <= end]
    prompt = sum(j.turn.prompt_tokens for j in measured)
    hits = sum(j.hit_blocks * block_size for j in measured)
    ttfts = [j.first_token_s - j.arrival_s for j in measured]
    out_tokens = sum(j.turn.output_tokens for j in jobs if start <= j.done_s <= end)
    span = max(end - start, 1e-9)
    mean_in_flight = [a / span for a in in_flight_area]
    return RunMetrics(
        requests=len(measured),
        hit_rate=hits / prompt if prompt else 0.0,
        pooled_hit_rate=pooled,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p90_s=percentile(ttfts, 90),
        ttft_p99_s=percentile(ttfts, 99),
        throughput_tps=out_tokens / span,
        offered_tps=offered_tps,
        load_ratio=max(mean_in_flight) / min(mean_in_flight) if min(mean_in_flight) > 0 else math.inf,
        reasons=dict(Counter(j.reason for j in measured)),
    )
