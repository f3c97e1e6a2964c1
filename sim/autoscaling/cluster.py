"""Discrete-event simulation of one autoscaled engine deployment: replicas that take minutes to start.

Replicas are ``sim.routing.replica.Replica`` (vLLM-style continuous batching calibrated to the
B300 seed table). Around them, what Serve does:

* **Routing**: power of two choices among running replicas with fewer than ``max_ongoing_requests``
  in flight (Serve's default router); when every replica is full or none runs, requests wait at the
  handle, in order, and are sent as soon as one has room (Serve's retry loop). Nothing is dropped.
* **Metrics**: every ``sample_s`` the handle's ongoing/queued counts and each replica's stats record
  (running, waiting, KV usage, TTFT / time-per-token p90 over the last ``stats_window_s``) are sampled;
  every ``push_s`` the controller receives their mean over the last ``look_back_s`` (Serve's
  ``look_back_period_s``, 10 s pushes), so both policies see equally stale numbers.
* **Control loop**: every ``tick_s`` the policy runs inside :class:`~sim.autoscaling.serve_loop.ServeLoop`.
* **Replica lifecycle**: a new replica holds its GPU from the moment it is asked for and serves after a
  start time drawn from ``start_s_range`` (minutes). A replica asked to leave is a starting one if any
  (the newest), else the running one with the fewest requests in flight; it stops receiving requests
  and leaves once its in-flight requests finish, or at ``graceful_shutdown_s``, cutting what is left
  (counted as dropped).

GPU time is counted for every replica from request to departure, over the trace's duration.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from contracts.engine_report import BlockGeometry, ReplicaReport
from deployments.engine.replica_stats import p90
from sim.autoscaling.serve_loop import ControlLoop
from sim.autoscaling.traces import Trace, arrivals, request
from sim.routing.engine import EngineModel
from sim.routing.replica import Job, Replica

_ARRIVE, _STEP, _READY, _SAMPLE, _PUSH, _TICK, _CUT = range(7)
_UNMODELLED = (  # report fields the autoscaler does not read and the simulated engine does not count
    "kv_tokens_in_use",
    "kv_capacity_tokens",
    *(name for name in ReplicaReport.__dataclass_fields__ if name.endswith("_total")),
)


@dataclass(frozen=True)
class ClusterConfig:
    engine: EngineModel = field(default_factory=lambda: EngineModel(kv_blocks=40_000))
    max_ongoing_requests: int = 96  # max_num_seqs x queue_headroom (64 x 1.5); __main__ takes the config's
    start_s_range: tuple[float, float] = (180.0, 300.0)  # node + weights + CUDA graphs, target and drafter
    initial_replicas: int = 1
    graceful_shutdown_s: float = 1649.0  # gemma4-dflash-b300.yaml: 32768 tokens at 20 tok/s + 10 s (ditto)
    sample_s: float = 2.0
    push_s: float = 10.0
    look_back_s: float = 30.0
    stats_window_s: float = 30.0
    tick_s: float = 1.0
    seed: int = 0


class SimReplica:
    """A replica's engine plus its lifecycle and the latency window its stats record reports."""

    def __init__(self, index: int, engine: EngineModel, asked_s: float, ready_s: float) -> None:
        self.engine = Replica(index, f"r{index}", engine)
        self.asked_s = asked_s
        self.ready_s = ready_s
        self.running = False
        self.leaving_s: float | None = None
        self.gone_s: float | None = None
        self.in_flight: dict[Job, float] = {}  # -> when it reached the engine (vLLM's arrival time)
        self.ttfts: deque[tuple[float, float]] = deque()
        self.tpots: deque[tuple[float, float]] = deque()  # one entry per finished request
        self.tokens: deque[tuple[float, int]] = deque()  # output tokens of finished requests
        self.samples: deque[tuple[float, dict[str, float]]] = deque()

    @property
    def serving(self) -> bool:
        return self.running and self.leaving_s is None

    def record(self, now: float, window_s: float) -> dict[str, float]:
        """The replica's report on the wire, as ``EngineReplica.record_autoscaling_stats`` sends it.

        The simulated engine models batch, queue, KV and latency; the counters it does not model are 0.
        """
        for q in (self.ttfts, self.tpots, self.tokens):
            while q and q[0][0] < now - window_s:
                q.popleft()
        eng = self.engine
        tau = None
        if eng.running and eng.engine.speculative:
            tau = sum(j.turn.tau for j in eng.running) / len(eng.running)
        unmodelled = dict.fromkeys(_UNMODELLED, 0.0)
        report = ReplicaReport(
            geometry=BlockGeometry.uniform(eng.engine.block_size),
            num_running=len(eng.running),
            num_waiting=len(eng.waiting),
            kv_cache_usage=eng.kv.usage(),
            ongoing_requests=len(self.in_flight),
            engine_unfinished_requests=len(self.in_flight),
            finished_requests_per_s=len(self.tpots) / window_s,
            # counted when a request finishes (the engine counts per step): lumpier, same mean
            generation_tokens_per_s=sum(n for _, n in self.tokens) / window_s,
            recent_acceptance_length=tau,
            ttft_p90_s=p90([v for _, v in self.ttfts]) if self.ttfts else None,
            tpot_p90_s=p90([v for _, v in self.tpots]) if self.tpots else None,
            **unmodelled,
        )
        return report.to_wire()


@dataclass
class RunResult:
    jobs: list[Job]
    replicas: list[SimReplica]
    timeline: list[tuple[float, int, int, float]]  # (t, target, serving, offered rps)
    dropped: int
    duration_s: float


class AutoscaledCluster:
    def __init__(self, trace: Trace, loop: ControlLoop, config: ClusterConfig) -> None:
        self.trace = trace
        self.loop = loop
        self.config = config
        self.rng = random.Random(config.seed)
        self.route_rng = random.Random(config.seed + 1)
        workload_rng = random.Random(config.seed + 2)
        self.jobs = [
            Job(f"q{i}", i, 0, request(workload_rng, config.engine), t)
            for i, t in enumerate(arrivals(trace, workload_rng))
        ]
        self.replicas: list[SimReplica] = []
        self.queue: deque[Job] = deque()
        self.queue_samples: deque[tuple[float, float, float]] = deque()  # (t, ongoing, queued)
        self.pushed: tuple[float, float, dict[str, dict[str, float]]] = (0.0, 0.0, {})
        self.target = config.initial_replicas
        self.timeline: list[tuple[float, int, int, float]] = []
        self.dropped = 0
        self.now = 0.0
        self._pending = 0  # requests not finished yet
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = count()

    # -- the loop ------------------------------------------------------------------------------------

    def run(self) -> RunResult:
        for _ in range(self.config.initial_replicas):
            self._add_replica(ready_now=True)
        for job in self.jobs:
            self._push(job.arrival_s, _ARRIVE, job)
        for kind, period in ((_SAMPLE, self.config.sample_s), (_PUSH, self.config.push_s), (_TICK, self.config.tick_s)):
            self._push(period, kind, None)
        handlers = {
            _ARRIVE: self._on_arrive,
            _STEP: self._on_step,
            _READY: self._on_ready,
            _SAMPLE: self._on_sample,
            _PUSH: self._on_push,
            _TICK: self._on_tick,
            _CUT: self._on_cut,
        }
        self._pending = len(self.jobs)
        while self._heap and (self._pending > 0 or self.now < self.trace.duration_s):
            self.now, _, kind, payload = heapq.heappop(self._heap)
            handlers[kind](payload)
        for r in self.replicas:
            if r.gone_s is None:
                r.gone_s = self.now
        return RunResult(self.jobs, self.replicas, self.timeline, self.dropped, self.now)

    def _push(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    # -- requests ------------------------------------------------------------------------------------

    def _on_arrive(self, job: Job) -> None:
        if self.queue or not self._route(job):
            self.queue.append(job)

    def _route(self, job: Job) -> bool:
        cap = self.config.max_ongoing_requests
        open_ = [r for r in self.replicas if r.serving and len(r.in_flight) < cap]
        if not open_:
            return False
        pick = min(self.route_rng.sample(open_, min(2, len(open_))), key=lambda r: len(r.in_flight))
        job.replica = pick.engine.index
        pick.in_flight[job] = self.now
        self._after(pick, pick.engine.submit(job, self.now))
        return True

    def _drain_queue(self) -> None:
        while self.queue and self._route(self.queue[0]):
            self.queue.popleft()

    def _on_step(self, payload: tuple[int, int]) -> None:
        index, epoch = payload
        replica = self.replicas[index]
        if epoch != replica.engine.epoch or replica.gone_s is not None:
            return
        first, finished, end = replica.engine.complete(self.now)
        self._after(replica, end)
        for job in first:  # the engine's TTFT: from the request reaching it, as vLLM measures
            replica.ttfts.append((self.now, job.first_token_s - replica.in_flight[job]))
        for job in finished:
            del replica.in_flight[job]
            self._pending -= 1
            tpot = (job.done_s - job.first_token_s) / max(1, job.turn.output_tokens - 1)
            replica.tpots.append((self.now, tpot))
            replica.tokens.append((self.now, job.turn.output_tokens))
        if replica.leaving_s is not None and not replica.in_flight:
            replica.gone_s = self.now
        self._drain_queue()

    def _after(self, replica: SimReplica, end: float | None) -> None:
        if end is not None:
            self._push(end, _STEP, (replica.engine.index, replica.engine.epoch))

    # -- replicas ------------------------------------------------------------------------------------

    def _add_replica(self, ready_now: bool = False) -> None:
        start = 0.0 if ready_now else self.rng.uniform(*self.config.start_s_range)
        r = SimReplica(len(self.replicas), self.config.engine, self.now, self.now + start)
        self.replicas.append(r)
        if ready_now:
            r.running = True
        else:
            self._push(r.ready_s, _READY, r.engine.index)

    def _on_ready(self, index: int) -> None:
        r = self.replicas[index]
        if r.leaving_s is None:
            r.running = True
            self._drain_queue()

    def _remove_replica(self) -> None:
        alive = [r for r in self.replicas if r.leaving_s is None and r.gone_s is None]
        starting = [r for r in alive if not r.running]
        if starting:
            r = max(starting, key=lambda x: x.asked_s)
            r.leaving_s = r.gone_s = self.now
            return
        r = min(alive, key=lambda x: len(x.in_flight))
        r.leaving_s = self.now
        if not r.in_flight:
            r.gone_s = self.now
        else:
            self._push(self.now + self.config.graceful_shutdown_s, _CUT, r.engine.index)

    def _on_cut(self, index: int) -> None:
        r = self.replicas[index]
        if r.gone_s is None:
            self.dropped += len(r.in_flight)
            self._pending -= len(r.in_flight)
            for job in r.in_flight:
                job.done_s = math.inf
            r.in_flight.clear()
            r.gone_s = self.now

    # -- metrics and the control loop --------------------------------------------------------------

    def _on_sample(self, _: None) -> None:
        horizon = self.now - self.config.look_back_s
        ongoing = len(self.queue) + sum(len(r.in_flight) for r in self.replicas if r.gone_s is None)
        self.queue_samples.append((self.now, float(ongoing), float(len(self.queue))))
        while self.queue_samples and self.queue_samples[0][0] < horizon:
            self.queue_samples.popleft()
        for r in self.replicas:
            if r.running and r.gone_s is None:
                r.samples.append((self.now, r.record(self.now, self.config.stats_window_s)))
                while r.samples and r.samples[0][0] < horizon:
                    r.samples.popleft()
        self._push(self.now + self.config.sample_s, _SAMPLE, None)

    def _on_push(self, _: None) -> None:
        """What the controller holds after this push: look-back means per replica and at the handle."""
        qs = self.queue_samples
        ongoing = sum(s[1] for s in qs) / len(qs) if qs else 0.0
        queued = sum(s[2] for s in qs) / len(qs) if qs else 0.0
        metrics: dict[str, dict[str, float]] = {}
        for r in self.replicas:
            if not r.serving or not r.samples:
                continue
            keys = {k for _, rec in r.samples for k in rec}
            for key in keys:
                values = [rec[key] for _, rec in r.samples if key in rec]
                metrics.setdefault(key, {})[r.engine.replica_id] = sum(values) / len(values)
        self.pushed = (ongoing, queued, metrics)
        self._push(self.now + self.config.push_s, _PUSH, None)

    def _on_tick(self, _: None) -> None:
        ongoing, queued, metrics = self.pushed
        running = [r.engine.replica_id for r in self.replicas if r.serving]
        target = self.loop.tick(
            now=self.now,
            target=self.target,
            running=running,
            total_num_requests=ongoing,
            total_queued_requests=queued,
            metrics=metrics,
        )
        alive = sum(1 for r in self.replicas if r.leaving_s is None and r.gone_s is None)
        for _ in range(target - alive):
            self._add_replica()
        for _ in range(alive - target):
            self._remove_replica()
        self.target = target
        self.timeline.append((self.now, target, len(running), self.trace.rate(self.now)))
        self._push(self.now + self.config.tick_s, _TICK, None)
