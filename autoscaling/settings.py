"""Serve's concurrency and autoscaling settings for an engine deployment, from the engine's size.

Ray Serve LLM leaves ``max_ongoing_requests`` and ``target_ongoing_requests`` at 1e9, so a replica
accepts everything and Serve never scales. Here both derive from the engine's batch size
(``max_num_seqs``): a replica takes at most ``max_num_seqs x queue_headroom`` requests, the router
sends the rest to other replicas (or holds them), and Serve adds a replica when replicas run above
``target_fill`` of their batch.
"""

from __future__ import annotations

import math
from typing import Any

from serve_app.config import ModelConfig


def max_ongoing_requests(model: ModelConfig) -> int:
    return max(1, math.ceil(model.engine.max_num_seqs * model.replicas.queue_headroom))


def target_ongoing_requests(model: ModelConfig) -> float:
    return max(1.0, model.engine.max_num_seqs * model.replicas.target_fill)


def autoscaling_config(model: ModelConfig) -> dict[str, Any]:
    """Serve ``autoscaling_config`` for the model's engine deployment."""
    r = model.replicas
    cfg: dict[str, Any] = {
        "min_replicas": r.min_replicas,
        "max_replicas": r.max_replicas,
        "target_ongoing_requests": target_ongoing_requests(model),
        "upscale_delay_s": r.upscale_delay_s,
        "downscale_delay_s": r.downscale_delay_s,
    }
    if r.initial_replicas is not None:
        cfg["initial_replicas"] = r.initial_replicas
    return cfg
