"""The discrete-event simulation: a router running a real policy object in front of N replicas.

The router is the one Serve runs, :class:`routing.router.Router`: for each request it gets a
:class:`~routing.policy.RouteRequest` of the prompt's leading vLLM block hashes (at most ``ROUTE_BLOCKS``,
the production config's ``routing.max_prefix_blocks``) and a :class:`~routing.router.ReplicaView` per
replica — ``waiting`` and ``kv_usage`` from the replicas' last report (every ``stats_period_s``, so up to
that stale); the router adds its own exact in-flight counts and asks the policy. The simulation then
does what Serve does: takes the first replica with room in the best ranked group (least in flight
first) and tells the router it was sent. When every replica is at ``capacity`` the request waits
at the router (Serve's retry loop) and is routed again, in arrival order, as soon as one finishes.

In precise mode the replicas' KV cache events (stored / removed) reach ``policy.observe`` after
``event_delay_s`` (ZMQ + Redis); in approximate mode the policy only learns from its own decisions.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any

from routing.events import BlocksRemoved, BlocksStored, KvEvent
from routing.hashing import BlockHash
from routing.policy import Decision, Policy, RouteRequest
from routing.router import ReplicaView, Router, max_ongoing_requests
from sim.production import production_model
from sim.routing.engine import EngineModel
from sim.routing.metrics import RunMetrics, pooled_hit_rate, summarize
from sim.routing.replica import Job, Replica
from sim.routing.workloads import Workload

logger = logging.getLogger(__name__)

_ARRIVE, _STEP, _KV_EVENTS, _STATS = range(4)
ROUTE_BLOCKS: int = production_model().routing.max_prefix_blocks  # leading blocks the router hashes
WARMUP_FRACTION = 0.25  # of the arrival horizon: long enough for the caches to fill at every scale here


@dataclass(frozen=True, slots=True)
class SimConfig:
    replicas: int = 16
    engine: EngineModel = field(default_factory=EngineModel)
    load: float = 0.8  # arrival rate as a multiple of the cluster's cold capacity (EngineModel.cold_capacity_rps)
    precise: bool = False  # deliver the engines' KV events to the policy
    queue_headroom: float = 1.0  # max_ongoing_requests = max_num_seqs x this (ReplicaConfig.queue_headroom)
    event_delay_s: float = 0.02  # engine -> ZMQ -> Redis -> router
    stats_period_s: float = field(default_factory=lambda: production_model().routing.stats_period_s)
    warmup_fraction: float = WARMUP_FRACTION  # of the arrival horizon, excluded from the metrics
    seed: int = 0


def _events(replica_id: str, log: list[tuple[bool, BlockHash]]) -> list[KvEvent]:
    """Consecutive stores / removals as one event each, order kept."""
    out: list[KvEvent] = []
    run: list[BlockHash] = []
    stored = True
    for is_stored, h in log:
        if run and is_stored != stored:
            out.append(BlocksStored(replica_id, tuple(run)) if stored else BlocksRemoved(replica_id, tuple(run)))
            run = []
        stored = is_stored
        run.append(h)
    if run:
        out.append(BlocksStored(replica_id, tuple(run)) if stored else BlocksRemoved(replica_id, tuple(run)))
    return out


PolicyFactory = Callable[[Callable[[], float]], Policy]
"""Builds a policy given the simulation's clock (the anchors' trees time-stamp their entries)."""


class Simulation:
    def __init__(self, workload: Workload, make_policy: PolicyFactory, config: SimConfig) -> None:
        self.workload = workload
        self.config = config
        eng = config.engine
        self.replicas = [Replica(i, f"replica-{i:02d}", eng) for i in range(config.replicas)]
        self._index = {r.replica_id: r.index for r in self.replicas}
        self.capacity = max_ongoing_requests(eng.max_num_seqs, config.queue_headroom)
        self.in_flight = [0] * config.replicas  # what Serve counts; the router counts the same
        self._views = [ReplicaView(r.replica_id, self.capacity) for r in self.replicas]  # as last reported
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = count()
        self._queue: deque[Job] = deque()
        self.jobs: list[Job] = []
        self.now = 0.0
        self.policy = make_policy(lambda: self.now)
        self.router = Router(self.policy)  # hashes come precomputed with the workload: no hint to hash
        cold_rps = eng.cold_capacity_rps(workload.mean_prompt_tokens, workload.mean_output_tokens)
        rate = config.load * config.replicas * cold_rps
        self.offered_tps = rate * workload.mean_output_tokens
        session_rate = rate / workload.turns_per_session
        rng = random.Random(config.seed)
        t = 0.0
        for s in range(len(workload.sessions)):
            t += rng.expovariate(session_rate)
            self._push(t, _ARRIVE, (s, 0))
        self.window = (config.warmup_fraction * t, t)
        self._area = [0.0] * config.replicas
        self._area_t = [0.0] * config.replicas
        self._push(config.stats_period_s, _STATS, None)

    def run(self) -> RunMetrics:
        handlers = {_ARRIVE: self._on_arrive, _STEP: self._on_step, _KV_EVENTS: self._on_kv, _STATS: self._on_stats}
        while self._heap:
            self.now, _, kind, payload = heapq.heappop(self._heap)
            handlers[kind](payload)
        for index in range(len(self.replicas)):
            self._integrate(index)
        done = sum(1 for j in self.jobs if not math.isnan(j.done_s))
        if done != self.workload.requests:
            raise RuntimeError(f"{self.workload.requests - done} requests never finished")
        eng = self.config.engine
        pooled = pooled_hit_rate(self.jobs, eng.kv_blocks * self.config.replicas, eng.block_size, self.window)
        logger.debug("%s: %d requests until t=%.1f s", self.policy.name, len(self.jobs), self.now)
        return summarize(self.jobs, self.window, self._area, pooled, eng.block_size, self.offered_tps)

    def _push(self, t: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, payload))

    def _on_arrive(self, payload: tuple[int, int]) -> None:
        s, k = payload
        session = self.workload.sessions[s]
        job = Job(f"{session.session_id}t{k}", s, k, session.turns[k], self.now)
        self.jobs.append(job)
        if self._queue or not self._route(job):
            self._queue.append(job)

    def _on_step(self, payload: tuple[int, int]) -> None:
        index, epoch = payload
        replica = self.replicas[index]
        if epoch != replica.epoch:
            return
        _, finished, end = replica.complete(self.now)
        self._after(replica, end)
        for job in finished:
            self.router.completed(job.request_id)
            self._count(index, -1)
            turns = self.workload.sessions[job.session].turns
            if job.turn_index + 1 < len(turns):
                self._push(self.now + turns[job.turn_index + 1].think_s, _ARRIVE, (job.session, job.turn_index + 1))
        while self._queue and self._route(self._queue[0]):
            self._queue.popleft()

    def _on_kv(self, payload: list[KvEvent]) -> None:
        for event in payload:
            self.router.observe(event)

    def _on_stats(self, _: None) -> None:
        self._views = [ReplicaView(r.replica_id, self.capacity, len(r.waiting), r.kv.usage()) for r in self.replicas]
        if self._heap:
            self._push(self.now + self.config.stats_period_s, _STATS, None)

    def _route(self, job: Job) -> bool:
        """Route ``job`` if some replica has room; False leaves it to the caller to queue."""
        request = RouteRequest(job.request_id, job.turn.block_hashes[:ROUTE_BLOCKS])
        decision = self.router.choose(request, self._views)
        index = self._pick(decision)
        if index is None:
            return False
        replica = self.replicas[index]
        self.router.sent(job.request_id, replica.replica_id)
        job.replica, job.reason = index, decision.reason
        self._count(index, +1)
        self._after(replica, replica.submit(job, self.now))
        return True

    def _pick(self, decision: Decision) -> int | None:
        """Serve's rule: the best group first; within a group the least loaded replica with room."""
        for group in decision.ranked:
            open_ = [self._index[r] for r in group if self.in_flight[self._index[r]] < self.capacity]
            if open_:
                return min(open_, key=lambda i: self.in_flight[i])
        return None

    def _after(self, replica: Replica, end: float | None) -> None:
        """Schedule the replica's next step end and ship its KV events."""
        if end is not None:
            self._push(end, _STEP, (replica.index, replica.epoch))
        log = replica.kv.drain_log()
        if log and self.config.precise:
            self._push(self.now + self.config.event_delay_s, _KV_EVENTS, _events(replica.replica_id, log))

    def _count(self, index: int, delta: int) -> None:
        self._integrate(index)
        self.in_flight[index] += delta

    def _integrate(self, index: int) -> None:
        """Add the replica's in-flight count since its last change to its area over the measured window."""
        start, end = self.window
        lo, hi = max(self._area_t[index], start), min(self.now, end)
        if hi > lo:
            self._area[index] += self.in_flight[index] * (hi - lo)
        self._area_t[index] = self.now
