"""prefix: send a request where its prompt's KV blocks already are, unless that replica is busy.

For each replica r with leading matched blocks m_r (of the prompt's n full blocks), fill f_r =
in_flight / capacity and KV usage k_r:

    score_r = w_prefix * m_r / n  -  w_load * f_r  -  w_kv * k_r  (+ w_session for the session's replica)

The best score wins, with these guards, checked in order:

1. imbalance — when ``max(in_flight) - min(in_flight) > imbalance_abs`` and
   ``max > imbalance_rel * min`` the least-loaded replica takes the request (SGLang's rule), so a hot
   prefix cannot pile every request onto one replica;
2. full — replicas at capacity rank after every replica with room;
3. cold — when no replica holds at least ``min_match_fraction`` of the prompt's blocks, the prompt goes
   to the replica this router has sent the least prefill work, among those within ``imbalance_abs`` of
   the least loaded. Prefill work is counted in blocks a replica did not hold when a request was sent
   there (its whole prompt for a cold one, the uncached tail for a hit), so a replica busy with a hot
   prefix's hits gets fewer new prefixes; in-flight counts would mix cheap cached requests up with
   expensive cold prefills. The count fades over the last ``prefill_memory`` routed requests per
   replica: a replica that was busy many routed requests ago is not kept from new prefixes now
   (without the fade, one replica's long run of agent turns sent the next workload's cold prompts all
   to the other). This is Ray Serve LLM's smallest-tree rule, counted in uncached blocks; it replaced
   llm-d's no-hit LRU, which rotated cold prompts evenly over hot and quiet replicas alike
   (docs/routing-simulator.md). A replica joins the count level with the least-worked one, its first
   request included, so a new replica takes its share of cold prompts instead of all of them. The
   threshold keeps a short shared preamble (BOS and chat-template boilerplate, a block or two every
   prompt has) from pulling every new conversation onto the first replica.

The simulator (``docs/routing-simulator.md``) chose ``imbalance_abs`` 32 over SGLang's 8: with
dozens of replicas the in-flight spread near saturation exceeds 8 most of the time, and the guard
then scattered prefixes over the cluster.

``on_routed`` records the prompt's blocks for the chosen replica at once, so siblings of a burst
sharing a prefix follow the first before the engine has even started it, and adds the blocks it did
not hold to its prefill count. The count is this router's own: a sibling router's decisions reach the
index through ``observe`` but not the count, so each router balances the cold prompts it places itself.
In precise mode ``observe`` applies the engines' KV events: stored blocks are added, evicted ones
removed, a cleared cache forgotten, so the index follows what each replica really holds.

Parameters: :class:`PrefixPolicyConfig`, their one definition (``routing.prefix`` in the app's YAML files).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import ClassVar

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from routing.events import BlocksRemoved, BlocksStored, KvEvent, ReplicaCleared, ReplicaSnapshot
from routing.index import PrefixIndex
from routing.policy import Decision, ReplicaLoad, RouteRequest


@dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class PrefixPolicyConfig:
    """The prefix policy's weights and guards: validated where they are defined, embedded in the app config."""

    weight_prefix: float = Field(1.0, ge=0, description="Weight of the cached share of the prompt.")
    weight_load: float = Field(0.5, ge=0, description="Weight of the replica's fill (in flight / capacity).")
    weight_kv: float = Field(0.1, ge=0, description="Weight of the replica's KV cache usage.")
    weight_session: float = Field(1.0, ge=0, description="Bonus of the session's own replica.")
    imbalance_abs: int = Field(
        32, ge=0, description="In-flight spread above which load wins outright (docs/routing-simulator.md)."
    )
    imbalance_rel: float = Field(1.5, ge=1, description="... and max in flight > this x min.")
    min_match_fraction: float = Field(
        0.1, ge=0, le=1, description="Share of the prompt a replica must hold to count as a match."
    )
    capacity_blocks: int = Field(65536, ge=1, description="Index entries kept per replica (bounds router memory).")
    prefill_memory: int = Field(
        16,
        ge=1,
        description="Routed requests per replica over which cold placement remembers the prefill work sent "
        "(older work fades exponentially).",
    )


# The fading weight is brought back to 1 (every count divided by it) above this: far below a float's
# maximum (~1.8e308), so weight x blocks never overflows, and rare enough that the O(replicas) pass is free.
_REWEIGH_ABOVE = 1e100


def _session_rank(key: str, replica_id: str) -> bytes:
    """Rendezvous hashing: each key prefers the replica with the highest digest, stably."""
    return hashlib.blake2b(f"{key}\x00{replica_id}".encode(), digest_size=8).digest()


class PrefixPolicy:
    name: ClassVar[str] = "prefix"

    def __init__(self, config: PrefixPolicyConfig | None = None) -> None:
        self.config = config or PrefixPolicyConfig()
        self.index = PrefixIndex(self.config.capacity_blocks)
        # replica -> prefill work sent (blocks it did not hold), each block counted at the weight of its day
        self._prefill_sent: dict[str, float] = {}
        self._weight = 1.0  # grows with every routed request, so that older work fades

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        cfg = self.config
        loads = [r.in_flight for r in replicas]
        least_loaded = sorted(
            replicas,
            key=lambda r: (
                r.fill,
                r.waiting,
                self.index.blocks_held(r.replica_id),
                _session_rank(request.request_id, r.replica_id),  # a stateless, even tie-break
            ),
        )
        n = max(1, len(request.block_hashes))
        held = {r: m for r, m in self.index.match(request.block_hashes).items() if m / n >= cfg.min_match_fraction}
        if max(loads) - min(loads) > cfg.imbalance_abs and max(loads) > cfg.imbalance_rel * min(loads):
            return self._ranked(least_loaded, "imbalance", held)
        session = None
        if request.session_key is not None:
            session = max(replicas, key=lambda r: _session_rank(request.session_key or "", r.replica_id)).replica_id
        if not held and session is None:
            return self._ranked(self._cold_order(replicas), "cold", held)

        def score(r: ReplicaLoad) -> float:
            s = (
                cfg.weight_prefix * held.get(r.replica_id, 0) / n
                - cfg.weight_load * r.fill
                - cfg.weight_kv * r.kv_usage
            )
            return s + (cfg.weight_session if r.replica_id == session else 0.0)

        best = sorted(replicas, key=lambda r: (-score(r), r.fill, r.replica_id))
        reason = "session" if session is not None and best[0].replica_id == session else "prefix"
        return self._ranked(best, reason, held)

    def _prefill_floor(self) -> float:
        """Where a replica this router never sent a request to ranks, and joins the count: level with the
        least-worked one (ahead of it on a tie)."""
        return min(self._prefill_sent.values(), default=0.0)

    def _cold_order(self, replicas: Sequence[ReplicaLoad]) -> list[ReplicaLoad]:
        least = min(r.in_flight for r in replicas)
        floor = self._prefill_floor()
        near = [r for r in replicas if r.in_flight <= least + self.config.imbalance_abs and r.in_flight < r.capacity]
        sent = self._prefill_sent
        near.sort(key=lambda r: (sent.get(r.replica_id, floor), r.replica_id in sent, r.in_flight, r.replica_id))
        chosen = {r.replica_id for r in near}
        return near + sorted((r for r in replicas if r.replica_id not in chosen), key=lambda r: (r.fill, r.replica_id))

    @staticmethod
    def _ranked(order: Sequence[ReplicaLoad], reason: str, held: dict[str, int]) -> Decision:
        with_room = [r for r in order if r.in_flight < r.capacity]
        full = [r for r in order if r.in_flight >= r.capacity]
        ranked = tuple((r.replica_id,) for r in with_room + full)
        return Decision(ranked=ranked, reason=reason, matched_blocks=held.get(ranked[0][0], 0))

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        uncached = len(request.block_hashes) - self.index.held_by(replica_id, request.block_hashes)
        window = max(2, self.config.prefill_memory * len(self._prefill_sent))  # routed requests remembered
        self._weight /= 1 - 1 / window
        sent = self._prefill_sent.get(replica_id)
        self._prefill_sent[replica_id] = self._prefill_floor() if sent is None else sent + uncached * self._weight
        if self._weight > _REWEIGH_ABOVE:  # the same order, in smaller numbers
            self._prefill_sent = {r: v / self._weight for r, v in self._prefill_sent.items()}
            self._weight = 1.0
        self.index.insert(replica_id, request.block_hashes)

    def on_replica_removed(self, replica_id: str) -> None:
        self._prefill_sent.pop(replica_id, None)
        self.index.drop_replica(replica_id)

    def index_size(self) -> int:
        return self.index.size_blocks()

    def observe(self, event: KvEvent) -> None:
        match event:
            case BlocksStored(replica, hashes):
                self.index.insert(replica, hashes)
            case BlocksRemoved(replica, hashes):
                self.index.remove(replica, hashes)
            case ReplicaCleared(replica):
                self.index.drop_replica(replica)
            case ReplicaSnapshot(replica, hashes):
                self.index.drop_replica(replica)
                self.index.insert(replica, hashes)
