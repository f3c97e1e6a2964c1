"""The anchors' routing algorithms behind :class:`routing.policy.Policy`: benchmark baselines, not for production."""

from __future__ import annotations

from bench.routing_sim.baselines.ray_prefix import RayPrefixConfig, RayPrefixPolicy
from bench.routing_sim.baselines.sglang_cache_aware import SglangCacheAwareConfig, SglangCacheAwarePolicy

__all__ = ["RayPrefixConfig", "RayPrefixPolicy", "SglangCacheAwareConfig", "SglangCacheAwarePolicy"]
