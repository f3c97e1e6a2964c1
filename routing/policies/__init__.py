"""Routing policies, one per file, behind :class:`routing.policy.Policy`; selected by name in the app config."""

from __future__ import annotations

from routing.policies.pow2 import PowerOfTwoPolicy
from routing.policies.prefix import PrefixPolicy, PrefixPolicyConfig
from routing.policies.round_robin import RoundRobinPolicy
from routing.policy import Policy

POLICIES: dict[str, type] = {p.name: p for p in (RoundRobinPolicy, PowerOfTwoPolicy, PrefixPolicy)}


def make_policy(name: str, prefix: PrefixPolicyConfig) -> Policy:
    """The policy called ``name``; ``prefix`` configures the prefix policy (the others take no settings)."""
    if name == PrefixPolicy.name:
        return PrefixPolicy(prefix)
    return POLICIES[name]()


__all__ = [
    "POLICIES",
    "Policy",
    "PowerOfTwoPolicy",
    "PrefixPolicy",
    "PrefixPolicyConfig",
    "RoundRobinPolicy",
    "make_policy",
]
