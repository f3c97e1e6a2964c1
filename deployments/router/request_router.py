"""Ray Serve request router that delegates every decision to a pure policy from ``routing/``.

It runs inside each ingress replica (wherever a DeploymentHandle to an engine deployment lives).
Per request it reads the routing hint the ingress attached (the prompt's token ids and an optional
session key), hashes the prompt once with the engines' own KV block size (reported by the replicas),
snapshots each replica's load — the requests this router has in flight there, plus the queue and KV
usage the replica last reported — and returns the policy's ranking. Serve then sends the request to
the first rank with room, probing queue lengths as usual.

With a shared routing stream (``redis_url`` set) the router also follows the model's stream in Redis:
the engines' KV events (precise mode) and sibling routers' decisions reach its policy through
``Policy.observe``, and it publishes its own decisions there, so every ingress replica routes on the
same picture. The stream runs on the router's own event loop (the one deciding), never on a
request's path: with Redis away the router keeps routing on what it knows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from config import KvStreamSettings
from deployments.kv_stream import StreamFollower
from deployments.router import metrics
from routing.events import BlocksStored, KvEvent
from routing.hashing import BlockHasher
from routing.policies import POLICIES, PrefixPolicyConfig
from routing.policy import Policy, ReplicaLoad, RouteRequest

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 16  # vLLM's default, used until a replica has reported its own
_MEMO_REQUESTS = 4096  # routing attempts of one request reuse its hashes; bound the memo


@dataclass(slots=True)
class _Pending:
    """A request between its first routing attempt and being sent: its hashes and what was predicted."""

    request: RouteRequest
    first_choice: str = ""
    matched_blocks: int = 0  # leading blocks the first choice was believed to hold


@dataclass(frozen=True, slots=True)
class RoutingHint:
    """What the ingress knows about a request that the router needs; passed as the ``routing`` kwarg."""

    token_ids: tuple[int, ...] = ()
    session_key: str | None = None


# Running replicas per model as this process's routers last heard from Serve; the ingress (same
# process) reads it to tell a model that is starting from one that is overloaded.
_running_replicas: dict[str, int] = {}


def running_replicas(model: str) -> int | None:
    """Replicas of ``model`` Serve runs now, or None before this process has routed to it."""
    return _running_replicas.get(model)


def make_policy(name: str, options: dict[str, Any]) -> Policy:
    if name == "prefix":
        return POLICIES[name](PrefixPolicyConfig(**options))
    return POLICIES[name]()


class PolicyRequestRouter(FIFOMixin, RequestRouter):
    """Serve ``RequestRouter`` shell around a :class:`routing.policy.Policy`."""

    def initialize_state(
        self,
        model: str = "",
        policy: str = "prefix",
        policy_options: dict[str, Any] | None = None,
        kv_stream: dict[str, Any] | None = None,
        max_prefix_blocks: int | None = None,
    ) -> None:
        self._model = model
        self._max_prefix_blocks = max_prefix_blocks
        self._hasher = BlockHasher()  # memoised: shared prefixes are hashed once
        self._policy_name = policy
        self._policy = make_policy(policy, policy_options or {})
        self._in_flight: Counter[str] = Counter()
        self._routed: dict[str, str] = {}  # internal request id -> replica id, until completed
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # bounded: dropped requests never report
        self._block_size = DEFAULT_BLOCK_SIZE  # hashing block, and the followed KV group's block:
        self._group_block_size = DEFAULT_BLOCK_SIZE  # what the replicas report, with the
        self._align_tokens = DEFAULT_BLOCK_SIZE  # unit in which the engines cache prompts
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
        self._policy.observe(event)
        metrics.STREAM_EVENTS.labels(self._model).inc()

    def _route_request(self, pending: PendingRequest, replicas: list[RunningReplica]) -> _Pending:
        key = pending.metadata.internal_request_id
        cached = self._pending.get(key)
        if cached is not None:
            return cached
        # Duck-typed: Serve ships this module to the router by value, so the ingress's RoutingHint
        # class and the one seen here are not the same object.
        hint = pending.kwargs.get("routing")
        hashes: tuple[int, ...] = ()
        session = None
        if hint is not None and hasattr(hint, "token_ids"):
            reported = next((r.routing_stats for r in replicas if r.routing_stats.get("block_size")), None)
            if reported is not None:
                self._block_size = int(reported["block_size"])
                self._group_block_size = int(reported.get("group_block_size") or self._block_size)
                self._align_tokens = int(reported.get("cache_align_tokens") or self._group_block_size)
            hashes = tuple(
                self._hasher.hashes(
                    hint.token_ids,
                    self._block_size,
                    self._group_block_size,
                    self._align_tokens,
                    self._max_prefix_blocks,
                )
            )
            session = hint.session_key
        entry = _Pending(RouteRequest(request_id=key, block_hashes=hashes, session_key=session))  # type: ignore[arg-type]
        self._pending[key] = entry
        while len(self._pending) > _MEMO_REQUESTS:
            self._pending.popitem(last=False)
        return entry

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if pending_request is None or not candidate_replicas:
            return [candidate_replicas]
        if self._stream is not None and not self._stream.started:
            self._start_stream()
        start = time.perf_counter()
        entry = self._route_request(pending_request, candidate_replicas)
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = [
            ReplicaLoad(
                replica_id=rid,
                in_flight=self._in_flight[rid],
                capacity=r.max_ongoing_requests,
                waiting=float(r.routing_stats.get("num_waiting", 0.0)),
                kv_usage=float(r.routing_stats.get("kv_cache_usage", 0.0)),
            )
            for rid, r in by_id.items()
        ]
        decision = self._policy.choose(entry.request, loads)
        entry.first_choice, entry.matched_blocks = decision.first, decision.matched_blocks
        metrics.DECISION_SECONDS.labels(self._model, self._policy_name).observe(time.perf_counter() - start)
        metrics.DECISIONS.labels(self._model, self._policy_name, decision.reason).inc()
        return [[by_id[rid] for rid in group] for group in decision.ranked]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        key = pending_request.metadata.internal_request_id
        rid = replica_id.unique_id
        entry = self._pending.pop(key, None)
        if entry is not None:
            self._record(entry.request, rid, entry.matched_blocks if rid == entry.first_choice else 0)
        self._routed[key] = rid
        self._in_flight[rid] += 1

    def _record(self, req: RouteRequest, rid: str, matched_blocks: int) -> None:
        metrics.PROMPT_TOKENS.labels(self._model).inc(len(req.block_hashes) * self._group_block_size)
        metrics.PREDICTED_HIT_TOKENS.labels(self._model).inc(matched_blocks * self._group_block_size)
        self._policy.on_routed(req, rid)
        metrics.INDEX_BLOCKS.labels(self._model).set(self._policy.index_size())
        if self._stream is not None and req.block_hashes:
            task = asyncio.get_running_loop().create_task(self._stream.publish(BlocksStored(rid, req.block_hashes)))
            self._publishing.add(task)
            task.add_done_callback(self._publishing.discard)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        rid = self._routed.pop(internal_request_id, None)
        if rid is not None and self._in_flight[rid] > 0:
            self._in_flight[rid] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget(replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        gone = set(self._in_flight) - {r.replica_id.unique_id for r in replicas}
        super().update_replicas(replicas)
        _running_replicas[self._model] = len(replicas)
        metrics.REPLICAS.labels(self._model).set(len(replicas))
        for rid in gone:
            self._forget(rid)

    def _forget(self, rid: str) -> None:
        self._policy.on_replica_removed(rid)
        self._in_flight.pop(rid, None)
