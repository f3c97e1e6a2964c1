"""The router's state around a policy: what Serve's request router and the simulator both run.

A :class:`Router` turns a request into the policy's inputs and keeps what the policy does not:

* **the prompt's hashes**, computed once per request (a request is routed again while every replica is
  full; its hashes and the first choice's predicted match are memoised, bounded) in the block geometry
  the replicas last reported (:class:`~contracts.engine_report.BlockGeometry`; vLLM's default before any),
  or taken from the hint when the ingress hashed the prompt exactly so (:attr:`Router.hashing`);
* **in-flight counts** per replica: requests this router sent there and that have not completed — exact,
  unlike the replicas' periodic reports, which add their queue and KV usage;
* **membership**: when the replica set shrinks, every replica that left is forgotten, whether this router
  routed to it or only heard of it (from a sibling router or an engine's KV events through Redis), and
  late events about it are ignored, so the index never holds blocks of a replica that is gone.

Pure: no Ray, no I/O, no clock. ``deployments/router/request_router.py`` adapts it to Serve and
``sim/routing/cluster.py`` drives it on a simulated clock.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from contracts.engine_report import BlockGeometry, PromptHashing, RoutingHint
from routing.events import KvEvent
from routing.hashing import DEFAULT_NONE_HASH_SEED, BlockHash, BlockHasher
from routing.policy import Decision, Policy, ReplicaLoad, RouteRequest

MEMO_REQUESTS = 4096  # requests between their first routing attempt and being sent; dropped ones never report
DEPARTED_REMEMBERED = 1024  # replicas that left whose late events are still ignored


def max_ongoing_requests(max_num_seqs: int, queue_headroom: float) -> int:
    """Requests a replica accepts before the router must look elsewhere (Serve's ``max_ongoing_requests``)."""
    return max(1, math.ceil(max_num_seqs * queue_headroom))


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One candidate replica as the router sees it: its capacity and what it last reported."""

    replica_id: str
    capacity: int  # max_ongoing_requests
    waiting: float = 0.0  # the engine's queue, from its last report
    kv_usage: float = 0.0  # the engine's KV cache usage 0..1, from its last report
    geometry: BlockGeometry | None = None  # None until the replica has reported


@dataclass(slots=True)
class _Pending:
    request: RouteRequest
    first_choice: str = ""
    matched_blocks: int = 0  # leading blocks the first choice was believed to hold


@dataclass(frozen=True, slots=True)
class Routed:
    """A request sent: to whom, and how many of its blocks the router predicted cached there."""

    request: RouteRequest
    replica_id: str
    predicted_blocks: int  # 0 when Serve sent it elsewhere than the first choice


class Router:
    """Routing state of one router process (invariants in the module docstring)."""

    def __init__(
        self, policy: Policy, max_prefix_blocks: int | None = None, none_hash_seed: str = DEFAULT_NONE_HASH_SEED
    ) -> None:
        """``none_hash_seed``: the seed the engines derive their hash chains' root from (vLLM's rule)."""
        self.policy = policy
        self.max_prefix_blocks = max_prefix_blocks
        self.geometry = BlockGeometry.DEFAULT
        self._seed = none_hash_seed
        self._hasher = BlockHasher(seed=none_hash_seed)  # memoised: shared prefixes are hashed once
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._in_flight: Counter[str] = Counter()
        self._routed: dict[str, str] = {}  # request id -> replica, until completed
        self._known: set[str] = set()  # every replica the policy may hold state for
        self._departed: OrderedDict[str, None] = OrderedDict()
        self.hashed: Counter[str] = Counter()  # prompts by where their hashes were made: "ingress" or "router"

    @property
    def hashing(self) -> PromptHashing:
        """How this router hashes a prompt now: a hint hashed so is taken as it is."""
        return PromptHashing(self.geometry, self.max_prefix_blocks, self._seed)

    def request(self, request_id: str, hint: RoutingHint | None, replicas: Sequence[ReplicaView]) -> RouteRequest:
        """The request as the policy sees it: the hint's prompt hashed in the replicas' reported geometry."""
        pending = self._pending.get(request_id)
        if pending is not None:
            return pending.request
        reported = next((r.geometry for r in replicas if r.geometry is not None), None)
        if reported is not None:
            self.geometry = reported
        hashes: tuple[BlockHash, ...] = ()
        session = None
        if hint is not None:
            if hint.hashed == self.hashing:
                hashes = cast(tuple[BlockHash, ...], hint.block_hashes)  # BlockHash is int: nothing to convert
                self.hashed["ingress"] += 1
            elif hint.token_ids:
                hashes = tuple(self._hasher.hashes(hint.token_ids, self.geometry, self.max_prefix_blocks))
                self.hashed["router"] += 1
            session = hint.session_key
        return RouteRequest(request_id=request_id, block_hashes=hashes, session_key=session)

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaView]) -> Decision:
        """The policy's ranking of ``replicas`` for ``request`` (remembered until :meth:`sent`)."""
        pending = self._pending.get(request.request_id)
        if pending is None:
            pending = self._pending[request.request_id] = _Pending(request)
            while len(self._pending) > MEMO_REQUESTS:
                self._pending.popitem(last=False)
        self._known.update(r.replica_id for r in replicas)
        loads = [
            ReplicaLoad(r.replica_id, self._in_flight[r.replica_id], r.capacity, r.waiting, r.kv_usage)
            for r in replicas
        ]
        decision = self.policy.choose(pending.request, loads)
        pending.first_choice, pending.matched_blocks = decision.first, decision.matched_blocks
        return decision

    def sent(self, request_id: str, replica_id: str) -> Routed | None:
        """Serve sent the request to ``replica_id``: count it and let the policy record it (None: unknown id)."""
        self._routed[request_id] = replica_id
        self._in_flight[replica_id] += 1
        self._known.add(replica_id)
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return None
        self.policy.on_routed(pending.request, replica_id)
        predicted = pending.matched_blocks if replica_id == pending.first_choice else 0
        return Routed(pending.request, replica_id, predicted)

    def completed(self, request_id: str) -> None:
        replica_id = self._routed.pop(request_id, None)
        if replica_id is not None and self._in_flight[replica_id] > 0:
            self._in_flight[replica_id] -= 1

    def in_flight(self, replica_id: str) -> int:
        return self._in_flight[replica_id]

    def update_replicas(self, replica_ids: Iterable[str]) -> list[str]:
        """The replicas running now; forgets every other one it knew of, and returns those."""
        current = set(replica_ids)
        gone = sorted(self._known - current)
        for replica_id in gone:
            self.remove(replica_id)
        self._known |= current
        for replica_id in current:
            self._departed.pop(replica_id, None)
        return gone

    def remove(self, replica_id: str) -> None:
        """``replica_id`` left (scaled down, or its actor died): drop its state and ignore its late events."""
        self.policy.on_replica_removed(replica_id)
        self._in_flight.pop(replica_id, None)
        self._known.discard(replica_id)
        self._departed[replica_id] = None
        while len(self._departed) > DEPARTED_REMEMBERED:
            self._departed.popitem(last=False)

    def observe(self, event: KvEvent) -> bool:
        """Apply a KV event or a sibling's decision; False when it is about a replica that left."""
        if event.replica_id in self._departed:
            return False
        self._known.add(event.replica_id)
        self.policy.observe(event)
        return True
