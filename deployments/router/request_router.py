"""Ray Serve request router: the Serve shell around :class:`routing.router.Router` and its policy.

It runs inside each ingress replica (wherever a DeploymentHandle to an engine deployment lives). Per
request it reads the :class:`~contracts.engine_report.RoutingHint` the ingress attached and each
replica's last :class:`~contracts.engine_report.ReplicaReport`, and returns the router's ranking; Serve
then sends the request to the first rank with room, probing queue lengths as usual. Everything stateful
(hashes, in-flight counts, membership) is in the pure router; this shell adds metrics and the stream.

With a shared routing stream (``redis_url`` set) it also follows the model's stream in Redis: the
engines' KV events (precise mode) and sibling routers' decisions reach the router through
``Router.observe``, and it publishes its own decisions there, so every ingress replica routes on the
same picture. The stream runs on the router's own event loop (the one deciding), never on a request's
path: with Redis away the router keeps routing on what it knows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from config import KvStreamSettings, RoutingConfig
from contracts.engine_report import ReplicaReport, RoutingHint
from deployments.kv_stream import StreamFollower
from deployments.router import metrics, prompt_hashing, replica_counts
from routing.events import BlocksStored, KvEvent
from routing.hashing import DEFAULT_NONE_HASH_SEED
from routing.policies import make_policy
from routing.router import ReplicaView, Routed, Router

logger = logging.getLogger(__name__)


class _Reports:
    """Each replica's report, parsed once per report Serve delivers (not once per routing decision)."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[dict[str, Any], ReplicaReport]] = {}

    def view(self, replica: RunningReplica) -> ReplicaView:
        rid, stats = replica.replica_id.unique_id, replica.routing_stats
        capacity = replica.max_ongoing_requests
        if not stats:  # not reported yet: load from this router's own counts only
            return ReplicaView(rid, capacity)
        cached = self._parsed.get(rid)
        if cached is None or cached[0] is not stats:
            cached = self._parsed[rid] = (stats, ReplicaReport.from_wire(stats))
        report = cached[1]
        return ReplicaView(rid, capacity, report.num_waiting, report.kv_cache_usage, report.geometry)

    def forget(self, replica_id: str) -> None:
        self._parsed.pop(replica_id, None)


class PolicyRequestRouter(FIFOMixin, RequestRouter):
    """Serve ``RequestRouter`` shell around :class:`routing.router.Router`."""

    def initialize_state(
        self,
        model: str = "",
        routing: dict[str, Any] | None = None,
        kv_stream: dict[str, Any] | None = None,
        none_hash_seed: str | None = None,
    ) -> None:
        """Serve passes ``request_router_kwargs`` (JSON): the model id, its ``RoutingConfig``, stream settings,
        and the engines' NONE_HASH seed (``config.engine_validation.engine_none_hash_seed``; None only where
        the policy hashes nothing)."""
        config = RoutingConfig.model_validate(routing or {})
        self._model = model
        self._policy_name = config.policy
        policy = make_policy(config.policy, config.prefix)
        self._router = Router(policy, config.max_prefix_blocks, none_hash_seed or DEFAULT_NONE_HASH_SEED)
        self._reports = _Reports()
        self._stream: StreamFollower | None = None
        self._publishing: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
        if kv_stream is not None:
            self._stream = StreamFollower(KvStreamSettings(**kv_stream), self._observe)
            self._start_stream()

    def _start_stream(self) -> None:
        """Start following as soon as we run on the router's loop (Serve may build us off it)."""
        if self._stream is None:
            return
        try:
            self._stream.start()
        except RuntimeError:
            return  # no running loop yet: the first routing decision starts it
        metrics.STREAM_CONNECTED.labels(self._model).set_function(lambda: float(self._stream_connected()))

    def _stream_connected(self) -> bool:
        return self._stream is not None and self._stream.connected

    def _observe(self, event: KvEvent) -> None:
        if self._router.observe(event):
            metrics.STREAM_EVENTS.labels(self._model).inc()

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None or not candidate_replicas:
            return [candidate_replicas]
        if self._stream is not None and not self._stream.started:
            self._start_stream()
        start = time.perf_counter()
        views = [self._reports.view(r) for r in candidate_replicas]
        hint = RoutingHint.of(pending_request.kwargs.get("routing"))
        hashed = self._router.hashed.copy()
        request = self._router.request(pending_request.metadata.internal_request_id, hint, views)
        prompt_hashing.publish(self._model, self._router.hashing)  # the geometry may have just been reported
        for by, count in (self._router.hashed - hashed).items():
            metrics.PROMPTS_HASHED.labels(self._model, by).inc(count)
        decision = self._router.choose(request, views)
        metrics.DECISION_SECONDS.labels(self._model, self._policy_name).observe(time.perf_counter() - start)
        metrics.DECISIONS.labels(self._model, self._policy_name, decision.reason).inc()
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        return [[by_id[rid] for rid in group] for group in decision.ranked]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        routed = self._router.sent(pending_request.metadata.internal_request_id, replica_id.unique_id)
        if routed is not None:
            self._record(routed)

    def _record(self, routed: Routed) -> None:
        block = self._router.geometry.group_block_size
        metrics.PROMPT_TOKENS.labels(self._model).inc(len(routed.request.block_hashes) * block)
        metrics.PREDICTED_HIT_TOKENS.labels(self._model).inc(routed.predicted_blocks * block)
        metrics.INDEX_BLOCKS.labels(self._model).set(self._router.policy.index_size())
        if self._stream is not None and routed.request.block_hashes:
            event = BlocksStored(routed.replica_id, routed.request.block_hashes)
            task = asyncio.get_running_loop().create_task(self._stream.publish(event))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        self._router.completed(internal_request_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._router.remove(replica_id.unique_id)
        self._reports.forget(replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        replica_counts.record(self._model, len(replicas))
        metrics.REPLICAS.labels(self._model).set(len(replicas))
        for rid in self._router.update_replicas(r.replica_id.unique_id for r in replicas):
            self._reports.forget(rid)
