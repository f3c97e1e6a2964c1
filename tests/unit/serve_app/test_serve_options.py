"""Serve's settings of an engine deployment: concurrency from the batch size, the SLO policy, shutdown grace."""

from __future__ import annotations

from autoscaling.policy import PolicyParams
from config import ModelConfig
from serve_app.serve_options import (
    SHUTDOWN_MARGIN_S,
    SLO_POLICY,
    autoscaling_config,
    graceful_shutdown_timeout_s,
    max_ongoing_requests,
    policy_params,
    target_ongoing_requests,
)


def _model(**replicas: object) -> ModelConfig:
    return ModelConfig.model_validate(
        {"id": "m", "target": "t", "engine": {"max_num_seqs": 64}, "replicas": {"max_replicas": 8, **replicas}}
    )


def test_sized_from_max_num_seqs():
    m = _model(target_fill=0.75, queue_headroom=1.5)
    assert max_ongoing_requests(m) == 96
    assert target_ongoing_requests(m) == 48
    cfg = autoscaling_config(m)
    assert cfg["min_replicas"] == 1 and cfg["max_replicas"] == 8
    assert cfg["target_ongoing_requests"] == 48
    # Serve never scales when the target is at or above what a replica accepts.
    assert cfg["target_ongoing_requests"] < max_ongoing_requests(m)


def test_initial_replicas_passed_only_when_set():
    assert "initial_replicas" not in autoscaling_config(_model())
    assert autoscaling_config(_model(initial_replicas=2))["initial_replicas"] == 2


def test_slo_policy_runs_with_serve_delays_off():
    cfg = autoscaling_config(_model(downscale_delay_s=120))
    assert cfg["policy"]["policy_function"] == SLO_POLICY
    assert cfg["upscale_delay_s"] == 0 and cfg["downscale_delay_s"] == 0  # the policy has its own
    kwargs = cfg["policy"]["policy_kwargs"]
    assert PolicyParams(**kwargs) == policy_params(_model(downscale_delay_s=120))
    assert kwargs["downscale_delay_s"] == 120 and kwargs["target_batch"] == 48


def test_serve_accepts_the_policy_and_builds_it():
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.config import AutoscalingConfig

    from deployments.autoscaler import SloPolicy

    serve_cfg = AutoscalingConfig(**autoscaling_config(_model()))
    assert isinstance(_resolve_policy_callable(serve_cfg.policy), SloPolicy)


def test_ongoing_requests_policy_keeps_serve_default_and_delays():
    cfg = autoscaling_config(_model(autoscaling={"policy": "ongoing_requests"}, upscale_delay_s=7))
    assert "policy" not in cfg and cfg["upscale_delay_s"] == 7 and cfg["target_ongoing_requests"] == 48


def test_graceful_shutdown_covers_the_longest_generation():
    m = ModelConfig.model_validate(
        {
            "id": "m",
            "target": "t",
            "engine": {"max_model_len": 4096},
            "replicas": {"autoscaling": {"min_decode_tokens_per_s": 8}},
        }
    )
    assert graceful_shutdown_timeout_s(m, request_timeout_s=3600) == 4096 / 8 + SHUTDOWN_MARGIN_S
    assert graceful_shutdown_timeout_s(m, request_timeout_s=100) == 100 + SHUTDOWN_MARGIN_S  # none lives longer
    fixed = m.model_copy(update={"replicas": m.replicas.model_copy(update={"graceful_shutdown_timeout_s": 42.0})})
    assert graceful_shutdown_timeout_s(fixed, request_timeout_s=3600) == 42.0
