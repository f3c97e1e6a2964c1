"""How the ingress's routers pick an engine replica for a request."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from config.base import Strict


class RoutingConfig(Strict):
    """How the ingress picks an engine replica for each request (see routing/policies/)."""

    policy: Literal["prefix", "pow2", "round_robin"] = Field(
        "prefix",
        description="prefix: where the prompt's KV blocks are, balanced against load; pow2: power of two "
        "choices (Ray Serve's default); round_robin: in turn.",
    )
    mode: Literal["approximate", "precise"] = Field(
        "approximate",
        description="prefix: approximate = the index holds what routers sent where; precise = also what the "
        "engines' KV cache events say they hold and evicted (needs redis_url).",
    )
    session_affinity: bool = Field(
        False, description="Keep a session (x-session-id header or the OpenAI `user` field) on one replica."
    )
    weight_prefix: float = Field(1.0, ge=0, description="prefix: weight of the cached share of the prompt.")
    weight_load: float = Field(0.5, ge=0, description="prefix: weight of the replica's fill (in flight/capacity).")
    weight_kv: float = Field(0.1, ge=0, description="prefix: weight of the replica's KV cache usage.")
    weight_session: float = Field(1.0, ge=0, description="prefix: bonus of the session's own replica.")
    imbalance_abs: int = Field(
        32, ge=0, description="prefix: in-flight spread above which load wins outright (see routing-simulator.md)."
    )
    imbalance_rel: float = Field(1.5, ge=1, description="prefix: ... and max > this x min.")
    min_match_fraction: float = Field(
        0.1, ge=0, le=1, description="prefix: share of the prompt a replica must hold to count as a match."
    )
    max_prefix_blocks: int = Field(
        256,
        ge=1,
        description="prefix: leading KV blocks of a prompt the router hashes and matches (llm-d's default); "
        "bounds routing cost for long prompts.",
    )
    index_capacity_blocks: int = Field(
        65536, ge=1, description="prefix: index entries kept per replica (bounds router memory)."
    )
    stats_period_s: float = Field(
        1.0, gt=0, description="How often replicas report load and counters to routers and /metrics."
    )
    events_maxlen: int = Field(
        100_000, ge=100, description="Entries kept in the Redis stream of KV events and routing records."
    )
    snapshot_period_s: float = Field(
        10.0, gt=0, description="precise: how often each engine replica writes its held blocks for late routers."
    )

    def policy_options(self) -> dict[str, Any]:
        """Keyword arguments of the pure policy (JSON-serialisable: they travel in Serve's config)."""
        if self.policy != "prefix":
            return {}
        return {
            "weight_prefix": self.weight_prefix,
            "weight_load": self.weight_load,
            "weight_kv": self.weight_kv,
            "weight_session": self.weight_session,
            "imbalance_abs": self.imbalance_abs,
            "imbalance_rel": self.imbalance_rel,
            "min_match_fraction": self.min_match_fraction,
            "capacity_blocks": self.index_capacity_blocks,
        }

    @property
    def needs_tokens(self) -> bool:
        """Whether the ingress must tokenize prompts for this policy."""
        return self.policy == "prefix"
