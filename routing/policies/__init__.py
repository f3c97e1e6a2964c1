"""Routing policies, one per file, behind :class:`routing.policy.Policy`; selected by name in AppConfig."""

from __future__ import annotations

from routing.policies.pow2 import PowerOfTwoPolicy
from routing.policies.prefix import PrefixPolicy, PrefixPolicyConfig
from routing.policies.round_robin import RoundRobinPolicy
from routing.policy import Policy

POLICIES: dict[str, type] = {p.name: p for p in (RoundRobinPolicy, PowerOfTwoPolicy, PrefixPolicy)}

__all__ = ["POLICIES", "Policy", "PowerOfTwoPolicy", "PrefixPolicy", "PrefixPolicyConfig", "RoundRobinPolicy"]
