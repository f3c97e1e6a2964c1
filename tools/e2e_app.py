"""The app the end-to-end tests and the chaos benchmark serve: local.yaml plus an autoregressive twin.

Both models serve the random-weight tiny pair (``tools.tiny_models``), not local.yaml's trained demo
pair: the tests check serving, not quality, and the random pair is built from code, never shipped.
The twin runs two replicas behind the prefix-aware router in precise mode (the engines' KV events
shared through a real Redis) with session affinity, and the ingress runs two replicas, for the
routing tests.
"""

from __future__ import annotations

from pathlib import Path

from config import AppConfig
from tools.tiny_models import ensure_models

LOCAL_CONFIG = Path(__file__).resolve().parent.parent / "serve_app" / "configs" / "local.yaml"
DFLASH_MODEL = "tiny-gemma4"
AR_MODEL = "tiny-gemma4-ar"


def e2e_config(redis_url: str) -> AppConfig:
    """local.yaml with the random pair, its AR twin on two replicas, two ingress replicas, ``redis_url``."""
    base = AppConfig.from_yaml(LOCAL_CONFIG)
    dflash = base.models[0]
    if dflash.id != DFLASH_MODEL or dflash.speculative is None:
        raise ValueError(f"{LOCAL_CONFIG} must serve {DFLASH_MODEL!r} with its drafter first")
    target, drafter = ensure_models()
    random_drafter = dflash.speculative.model_copy(update={"draft_model": str(drafter)})
    dflash = dflash.model_copy(update={"target": str(target), "speculative": random_drafter})
    two = dflash.replicas.model_copy(update={"min_replicas": 2, "max_replicas": 2})
    routing = dflash.routing.model_copy(update={"mode": "precise", "session_affinity": True, "snapshot_period_s": 2})
    ar = dflash.model_copy(update={"id": AR_MODEL, "speculative": None, "replicas": two, "routing": routing})
    # A short body deadline, so the test of a body that never finishes waits seconds, not the default 30.
    # Tests read counters right after acting: no cached /metrics (tests/unit/deployments/ingress covers the cache).
    ingress = base.ingress.model_copy(update={"num_replicas": 2, "body_read_timeout_s": 3.0, "metrics_cache_s": 0})
    return base.model_copy(
        update={"name": "dflash-test", "models": [dflash, ar], "ingress": ingress, "redis_url": redis_url}
    )
