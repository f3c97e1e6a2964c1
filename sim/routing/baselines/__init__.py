"""The anchors' routing algorithms behind :class:`routing.policy.Policy`: benchmark baselines, not for production."""

from __future__ import annotations

from sim.routing.baselines.ray_prefix import RayPrefixConfig, RayPrefixPolicy
from sim.routing.baselines.sglang_cache_aware import SglangCacheAwareConfig, SglangCacheAwarePolicy

__all__ = ["RayPrefixConfig", "RayPrefixPolicy", "SglangCacheAwareConfig", "SglangCacheAwarePolicy"]
