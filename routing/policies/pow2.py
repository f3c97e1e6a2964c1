"""pow2: power of two choices — two random replicas, the less loaded wins (Ray Serve's default)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from routing.events import KvEvent
from routing.policy import Decision, ReplicaLoad, RouteRequest


class PowerOfTwoPolicy:
    name: ClassVar[str] = "pow2"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, request: RouteRequest, replicas: Sequence[ReplicaLoad]) -> Decision:
        pair = self._rng.sample(list(replicas), k=min(2, len(replicas)))
        pair.sort(key=lambda r: (r.fill, r.waiting))
        picked = {r.replica_id for r in pair}
        rest = sorted((r for r in replicas if r.replica_id not in picked), key=lambda r: (r.fill, r.waiting))
        return Decision(ranked=(tuple(r.replica_id for r in pair), *((r.replica_id,) for r in rest)), reason="pow2")

    def on_routed(self, request: RouteRequest, replica_id: str) -> None:
        """Stateless."""

    def on_replica_removed(self, replica_id: str) -> None:
        """Stateless."""

    def observe(self, event: KvEvent) -> None:
        """Blind to caches."""

    def index_size(self) -> int:
        return 0
