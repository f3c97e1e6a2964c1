"""Serve's concurrency limits follow the engine's batch size instead of Ray Serve LLM's 1e9."""

from __future__ import annotations

from autoscaling.settings import autoscaling_config, max_ongoing_requests, target_ongoing_requests
from serve_app.config import ModelConfig


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
