"""An engine refuses a node whose environment would make its block hashes differ from the routers'."""

from __future__ import annotations

import pytest

from config import ModelConfig
from deployments.engine.replica import _check_environment
from routing.hashing import DEFAULT_NONE_HASH_SEED


def _model(policy: str) -> ModelConfig:
    return ModelConfig.model_validate({"id": "m", "target": "t", "routing": {"policy": policy}})


def test_seed_is_the_routers_when_pythonhashseed_is_unset(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    assert _check_environment(_model("prefix")) == DEFAULT_NONE_HASH_SEED


def test_a_node_pythonhashseed_is_refused_under_the_prefix_router(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PYTHONHASHSEED", "123")
    with pytest.raises(RuntimeError, match="PYTHONHASHSEED"):
        _check_environment(_model("prefix"))
    _check_environment(_model("round_robin"))  # nothing hashes there: allowed
