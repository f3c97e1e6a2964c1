"""How the ingress's routers pick an engine replica for a request."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from config.base import Strict
from routing.policies import PrefixPolicyConfig


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
    prefix: PrefixPolicyConfig = Field(
        default_factory=PrefixPolicyConfig,
        description="prefix: the policy's weights and guards (defined, with ranges, in routing/policies/prefix.py).",
    )
    max_prefix_blocks: int = Field(
        256,
        ge=1,
        description="prefix: leading KV blocks of a prompt the router hashes and matches (llm-d's default); "
        "bounds routing cost for long prompts.",
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

    @property
    def needs_tokens(self) -> bool:
        """Whether the ingress must tokenize prompts for this policy."""
        return self.policy == "prefix"
