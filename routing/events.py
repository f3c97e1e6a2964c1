"""What a router learns about replicas' KV caches besides its own decisions, and its wire form.

In precise mode each engine replica turns vLLM's KV cache events into these (for the one KV group
the router follows) and publishes them; every router applies them to its index. Routers also
publish what they route (as :class:`BlocksStored`), so sibling routers see a burst before the
engine confirms it. The wire form is compact JSON: events cross Redis, and the router must decode
thousands per second without help from vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from routing.hashing import BlockHash


@dataclass(frozen=True, slots=True)
class BlocksStored:
    replica_id: str
    hashes: tuple[BlockHash, ...]  # in prompt order


@dataclass(frozen=True, slots=True)
class BlocksRemoved:
    replica_id: str
    hashes: tuple[BlockHash, ...]


@dataclass(frozen=True, slots=True)
class ReplicaCleared:
    """The engine dropped its whole prefix cache (reset, or a restarted engine)."""

    replica_id: str


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    """Everything the replica holds now: replaces what the router believed (resync after a gap)."""

    replica_id: str
    hashes: tuple[BlockHash, ...]


KvEvent = BlocksStored | BlocksRemoved | ReplicaCleared | ReplicaSnapshot

_TAGS: dict[type, str] = {BlocksStored: "s", BlocksRemoved: "r", ReplicaCleared: "c", ReplicaSnapshot: "f"}
_TYPES = {tag: cls for cls, tag in _TAGS.items()}


def encode(event: KvEvent) -> str:
    body: dict[str, object] = {"t": _TAGS[type(event)], "r": event.replica_id}
    if not isinstance(event, ReplicaCleared):
        body["h"] = list(event.hashes)
    return json.dumps(body, separators=(",", ":"))


def decode(raw: str | bytes) -> KvEvent:
    """Raises ``ValueError`` (or ``KeyError``/``TypeError``) on anything that is not an encoded event."""
    body = json.loads(raw)
    cls = _TYPES[body["t"]]
    replica = str(body["r"])
    if cls is ReplicaCleared:
        return ReplicaCleared(replica)
    return cls(replica, tuple(BlockHash(int(h)) for h in body["h"]))
