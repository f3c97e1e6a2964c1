"""Serve's concurrency and autoscaling settings for an engine deployment, from the engine's size.

Ray Serve LLM leaves ``max_ongoing_requests`` and ``target_ongoing_requests`` at 1e9, so a replica
accepts everything and Serve never scales. Here both derive from the engine's batch size
(``max_num_seqs``): a replica takes at most ``max_num_seqs x queue_headroom`` requests, the router
sends the rest to other replicas (or holds them). With ``autoscaling.policy: slo`` Serve runs
:class:`deployments.autoscaler.SloPolicy`, which does its own cold-start lookahead and downscale
hysteresis, so Serve's delays are zeroed (they would stack on the policy's); with ``ongoing_requests``
Serve adds a replica when replicas run above ``target_fill`` of their batch, after its delays.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from autoscaling.policy import PolicyParams
from config import ModelConfig
from routing.router import max_ongoing_requests as replica_capacity

SLO_POLICY = "deployments.autoscaler:SloPolicy"
SHUTDOWN_MARGIN_S = 10.0  # the last chunk's trip to the client and the engine's abort path


def max_ongoing_requests(model: ModelConfig) -> int:
    return replica_capacity(model.engine.max_num_seqs, model.replicas.queue_headroom)


def target_ongoing_requests(model: ModelConfig) -> float:
    return max(1.0, model.engine.max_num_seqs * model.replicas.target_fill)


def policy_params(model: ModelConfig) -> PolicyParams:
    """The SLO policy's settings for the model's engine deployment."""
    r = model.replicas
    return PolicyParams(
        min_replicas=r.min_replicas,
        max_replicas=r.max_replicas,
        target_batch=target_ongoing_requests(model),
        downscale_delay_s=r.downscale_delay_s,
        slo=r.autoscaling.slo,
    )


def graceful_shutdown_timeout_s(model: ModelConfig, request_timeout_s: float) -> float:
    """How long a leaving replica may take to finish its in-flight requests.

    The longest request a replica can hold generates up to ``max_model_len`` tokens at no less than
    ``min_decode_tokens_per_s``; no request outlives the ingress's ``request_timeout_s`` either. An
    explicit ``graceful_shutdown_timeout_s`` wins.
    """
    r = model.replicas
    if r.graceful_shutdown_timeout_s is not None:
        return r.graceful_shutdown_timeout_s
    longest = model.engine.max_model_len / r.autoscaling.min_decode_tokens_per_s
    return math.ceil(min(longest, request_timeout_s) + SHUTDOWN_MARGIN_S)


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
    if r.autoscaling.policy == "slo":
        cfg.update(
            upscale_delay_s=0.0,
            downscale_delay_s=0.0,
            policy={"policy_function": SLO_POLICY, "policy_kwargs": asdict(policy_params(model))},
        )
    if r.initial_replicas is not None:
        cfg["initial_replicas"] = r.initial_replicas
    return cfg
