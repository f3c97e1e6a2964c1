"""The load and DFlash counters one engine replica reports to routers, autoscaler and /metrics.

vLLM hands every scheduler step's statistics to its stat loggers; :class:`ReplicaStatsLogger` is
one more logger beside vLLM's Prometheus logger. It keeps the latest gauges and running totals in a
:class:`ReplicaStats` record, cheap to copy into ``record_routing_stats`` every second, so routers and
the autoscaler see the engine's own numbers (queue, KV usage, acceptance) rather than guesses from
request counts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from contracts.engine_report import BlockGeometry, ReplicaReport


@dataclass(slots=True)
class ReplicaStats:
    """One replica's state. Gauges are as of the last engine step; counters are totals."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # share of KV blocks in use, 0..1
    kv_tokens_in_use: int = 0  # kv_cache_usage x KV capacity in tokens
    kv_capacity_tokens: int = 0
    generation_tokens_total: int = 0
    prompt_tokens_total: int = 0
    prefix_cache_queries_total: int = 0  # prompt tokens looked up in the prefix cache
    prefix_cache_hits_total: int = 0  # of those, tokens found cached
    spec_drafts_total: int = 0
    spec_draft_tokens_total: int = 0
    spec_accepted_tokens_total: int = 0

    @property
    def acceptance_length(self) -> float | None:
        """DFlash mean acceptance length tau = 1 + accepted / drafts (None before any draft)."""
        if self.spec_drafts_total == 0:
            return None
        return 1.0 + self.spec_accepted_tokens_total / self.spec_drafts_total


def build_report(
    stats: ReplicaStats,
    recent: dict[str, float],
    geometry: BlockGeometry,
    ongoing_requests: int,
    engine_unfinished_requests: int,
) -> ReplicaReport:
    """The replica's report: its counters, its recent window (:meth:`RecentLatency.snapshot`) and its geometry.

    Fields pass by name, so a counter renamed here and not in the contract fails at once (TypeError).
    """
    return ReplicaReport(
        geometry=geometry,
        ongoing_requests=ongoing_requests,
        engine_unfinished_requests=engine_unfinished_requests,
        acceptance_length=stats.acceptance_length,
        **asdict(stats),
        **recent,
    )


def p90(values: list[float]) -> float:
    """The 90th percentile by nearest rank (the value 90% of samples are at or below)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


class RecentLatency:
    """TTFT, time per output token and generated tokens over the last ``window_s`` seconds.

    The autoscaler scales on what requests experience now, not on totals since start: vLLM's
    per-step TTFTs and each finished request's mean time per output token (per token, so DFlash's
    multi-token steps count right), the output tokens/s the replica delivered, the requests/s it
    finished (its measured service rate) and DFlash's recent acceptance length (what a replica's
    tokens/s scales with: the traffic mix changes it).
    """

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._batch: deque[tuple[float, float]] = deque()  # (t, running x seconds since the last step)
        self._last: tuple[float, int] | None = None  # the last step's time and running batch
        self._ttft: deque[tuple[float, float]] = deque()
        self._tpot: deque[tuple[float, float]] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self._finished: deque[tuple[float, int]] = deque()
        self._drafts: deque[tuple[float, int, int]] = deque()  # (t, drafts, accepted tokens)

    def add(self, now: float, ttfts: list[float], tpots: list[float], tokens: int, finished: int, running: int) -> None:
        """One engine step: its latencies, tokens and finished requests, and the batch it left running.

        The batch counts from one step to the next (a step's batch runs until the next step reports),
        capped at the window: an idle gap after a step that left nothing running adds nothing.
        """
        if self._last is not None:
            then, batch = self._last
            if batch:
                self._batch.append((now, batch * min(now - then, self._window_s)))
        self._last = (now, running)
        self._ttft.extend((now, v) for v in ttfts)
        self._tpot.extend((now, v) for v in tpots)
        if tokens:
            self._tokens.append((now, tokens))
        if finished:
            self._finished.append((now, finished))
        self._expire(now)

    def add_drafts(self, now: float, drafts: int, accepted: int) -> None:
        if drafts:
            self._drafts.append((now, drafts, accepted))

    def snapshot(self, now: float) -> dict[str, float]:
        """p90s of what the window holds (absent when it holds none) and tokens/s over the window."""
        self._expire(now)
        out = {
            "generation_tokens_per_s": sum(n for _, n in self._tokens) / self._window_s,
            "finished_requests_per_s": sum(n for _, n in self._finished) / self._window_s,
            "recent_running": sum(n for _, n in self._batch) / self._window_s,
        }
        if self._ttft:
            out["ttft_p90_s"] = p90([v for _, v in self._ttft])
        if self._tpot:
            out["tpot_p90_s"] = p90([v for _, v in self._tpot])
        drafts = sum(d for _, d, _ in self._drafts)
        if drafts:
            out["recent_acceptance_length"] = 1.0 + sum(a for _, _, a in self._drafts) / drafts
        return out

    def _expire(self, now: float) -> None:
        horizon = now - self._window_s
        for q in (self._ttft, self._tpot, self._tokens, self._finished, self._drafts, self._batch):
            while q and q[0][0] < horizon:
                q.popleft()


class ReplicaStatsLogger:
    """A vLLM ``StatLoggerBase`` that folds each step's stats into a shared :class:`ReplicaStats`.

    vLLM builds loggers from factories ``(vllm_config, engine_index) -> logger``; use
    :meth:`factory` to bind the record this replica reads.
    """

    def __init__(self, stats: ReplicaStats, recent: RecentLatency, lock: threading.Lock, cache_config: Any) -> None:
        self._stats = stats
        self._recent = recent
        self._lock = lock
        self._cache_config = cache_config  # num_gpu_blocks is filled in once the engine has profiled

    @classmethod
    def factory(cls, stats: ReplicaStats, recent: RecentLatency, lock: threading.Lock) -> Any:
        def make(vllm_config: Any, engine_index: int = 0) -> ReplicaStatsLogger:
            return cls(stats, recent, lock, vllm_config.cache_config)

        return make

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        with self._lock:
            s = self._stats
            s.kv_capacity_tokens = (self._cache_config.num_gpu_blocks or 0) * (self._cache_config.block_size or 0)
            if scheduler_stats is not None:
                s.num_running = scheduler_stats.num_running_reqs
                s.num_waiting = scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
                s.kv_cache_usage = scheduler_stats.kv_cache_usage
                s.kv_tokens_in_use = int(scheduler_stats.kv_cache_usage * s.kv_capacity_tokens)
                prefix = scheduler_stats.prefix_cache_stats
                if prefix is not None:
                    s.prefix_cache_queries_total += prefix.queries
                    s.prefix_cache_hits_total += prefix.hits
                spec = scheduler_stats.spec_decoding_stats
                if spec is not None:
                    s.spec_drafts_total += spec.num_drafts
                    s.spec_draft_tokens_total += spec.num_draft_tokens
                    s.spec_accepted_tokens_total += spec.num_accepted_tokens
                    self._recent.add_drafts(time.monotonic(), spec.num_drafts, spec.num_accepted_tokens)
            if iteration_stats is not None:
                s.generation_tokens_total += iteration_stats.num_generation_tokens
                s.prompt_tokens_total += iteration_stats.num_prompt_tokens
                tpots = [
                    f.mean_time_per_output_token
                    for f in iteration_stats.finished_requests
                    if f.num_generation_tokens > 1
                ]
                self._recent.add(
                    time.monotonic(),
                    list(iteration_stats.time_to_first_tokens_iter),
                    tpots,
                    iteration_stats.num_generation_tokens,
                    len(iteration_stats.finished_requests),
                    s.num_running,
                )

    def log_engine_initialized(self) -> None:
        """Nothing to do: the record is read on demand."""

    def log(self) -> None:
        """Nothing to print: vLLM's own loggers print."""

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        """Sleep mode is not used by dflash-serve."""
