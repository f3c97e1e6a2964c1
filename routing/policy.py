"""The routing policy interface, its inputs and its decision. One policy per file in ``policies/``.

A policy sees frozen snapshots — the request's block hashes and each replica's load — and returns a
ranked choice with a reason. Choosing does not change state; :meth:`Policy.on_routed` records what
was actually sent, so the simulator and the Serve router apply decisions the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

from routing.events import KvEvent
from routing.hashing import BlockHash


@dataclass(frozen=True, slots=True)
class RouteRequest:
    request_id: str
    block_hashes: tuple[BlockHash, ...]  # the prompt's full blocks, vLLM's hashes
    session_key: str | None = None  # x-session-id header or the OpenAI `user` field, if affinity is on


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    replica_id: str
    in_flight: int  # requests sent to it and not finished, as this router counts them
    capacity: int  # max_ongoing_requests: what it accepts before the router must look elsewhere
    waiting: float = 0.0  # engine's waiting queue, from its last report
    kv_usage: float = 0.0  # engine's KV cache usage 0..1, from its last report

    @property
    def fill(self) -> float:
        return self.in_flight / max(1, self.capacity)


@dataclass(frozen=True, slots=True)
class Decision:
    ranked: tuple[tuple[str, ...], ...]  # replica ids, best group first; Serve tries them in order
    reason: str  # why the first group won: "prefix", "cold", "imbalance", "session", "rr", "pow2"
    matched_blocks: int = 0  # leading prompt blocks the first choice is believed to hold

    @property
    def first(self) -> str:
        return self.ranked[0][0]


class Policy(Protocol):
    name: ClassVar[str]

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision: ...

    def on_routed(self, request: RouteRequest, replica_id: str) -> None: ...

    def on_replica_removed(self, replica_id: str) -> None: ...

    def index_size(self) -> int:
        """(replica, block) entries the policy keeps: its memory, bounded by configuration."""
        ...

    def observe(self, event: KvEvent) -> None:
        """A replica's KV cache changed (precise mode) or a sibling router routed there."""
        ...
