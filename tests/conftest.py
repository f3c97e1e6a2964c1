"""Shared fixtures. The ``served`` fixture runs the real app: Ray Serve + vLLM engines on the tiny models."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serve_app.config import AppConfig
from tools.ports import free_port
from tools.redis_server import RedisServer
from tools.serve import start_ray
from tools.tiny_models import ensure_models

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO_ROOT / "serve_app" / "configs" / "local.yaml"
DFLASH_MODEL = "tiny-gemma4"
AR_MODEL = "tiny-gemma4-ar"


@pytest.fixture(scope="session", autouse=True)
def _repo_cwd() -> None:
    """Configs name models by ./ paths relative to the repository root."""
    os.chdir(REPO_ROOT)


def e2e_config(redis_url: str) -> AppConfig:
    """local.yaml plus an autoregressive twin of its model: the lossless comparison in one app.

    Both serve the random-weight tiny pair (``tools.tiny_models``), not local.yaml's trained demo pair:
    these tests check serving, not quality, and the random pair is built from code, never shipped.
    The twin runs two replicas behind the prefix-aware router in precise mode (the engines' KV events
    shared through a real Redis) with session affinity, and the ingress runs two replicas, for the
    routing tests.
    """
    base = AppConfig.from_yaml(LOCAL_CONFIG)
    dflash = base.models[0]
    assert dflash.id == DFLASH_MODEL and dflash.speculative is not None
    target, drafter = ensure_models()
    random_drafter = dflash.speculative.model_copy(update={"draft_model": str(drafter)})
    dflash = dflash.model_copy(update={"target": str(target), "speculative": random_drafter})
    two = dflash.replicas.model_copy(update={"min_replicas": 2, "max_replicas": 2})
    routing = dflash.routing.model_copy(update={"mode": "precise", "session_affinity": True, "snapshot_period_s": 2})
    ar = dflash.model_copy(update={"id": AR_MODEL, "speculative": None, "replicas": two, "routing": routing})
    ingress = base.ingress.model_copy(update={"num_replicas": 2})
    return base.model_copy(
        update={"name": "dflash-test", "models": [dflash, ar], "ingress": ingress, "redis_url": redis_url}
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class Served:
    base_url: str  # http://127.0.0.1:PORT
    config: AppConfig
    redis: RedisServer

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def engine_handle(self, model_id: str):
        from ray import serve

        model = next(m for m in self.config.models if m.id == model_id)
        return serve.get_deployment_handle(model.deployment_name(), app_name=self.config.name)

    def ingress_metrics(self) -> list[str]:
        """Each ingress replica's own Prometheus text (its routers' series included)."""
        from ray import serve

        handle = serve.get_deployment_handle("Ingress", app_name=self.config.name)
        return handle.broadcast("own_metrics_text").results(timeout_s=30)

    def replica_stats(self, model_id: str) -> dict[str, dict[str, float]]:
        """Stats of every replica of the model, by replica id."""
        results = self.engine_handle(model_id).broadcast("describe").results(timeout_s=30)
        return {r["replica_id"]: r["stats"] for r in results}


@pytest.fixture(scope="session")
def serve_url() -> Iterator[str]:
    """One local Ray + Serve for the session (http://127.0.0.1:PORT); apps are added with their own names.

    Logical CPUs: the ``served`` app's 3 engines and 2 ingress replicas, plus a second app of up to
    2 engines and an ingress (test_e2e_autoscaling).
    """
    import ray
    from ray import serve

    port = free_port()
    start_ray(num_cpus=8)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def served(serve_url: str, redis_server: RedisServer) -> Iterator[Served]:
    from ray import serve

    from serve_app.build import build_from_config

    config = e2e_config(redis_server.url)
    serve.run(build_from_config(config), name=config.name, route_prefix="/")
    yield Served(base_url=serve_url, config=config, redis=redis_server)
