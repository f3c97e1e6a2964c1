"""round_robin: replicas in turn, skipping full ones. Ignores prefixes; the baseline for cache hits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from routing.events import KvEvent
from routing.policy import Decision, ReplicaLoad, RouteRequest


class RoundRobinPolicy:
    name: ClassVar[str] = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        ordered = sorted(replicas, key=lambda r: r.replica_id)
        start = self._next % len(ordered)
        turn = ordered[start:] + ordered[:start]
        open_first = [r for r in turn if r.in_flight < r.capacity] + [r for r in turn if r.in_flight >= r.capacity]
        return Decision(ranked=tuple((r.replica_id,) for r in open_first), reason="rr")

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        self._next += 1

    def on_replica_removed(self, replica_id: str) -> None:
        """Stateless per replica."""

    def observe(self, event: KvEvent) -> None:
        """Blind to caches."""

    def index_size(self) -> int:
        return 0
