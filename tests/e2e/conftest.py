"""The e2e tier's fixtures: one local Ray + Serve per session, and the real app on the tiny models."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.served import Served
from tools.e2e_app import e2e_config
from tools.ports import free_port
from tools.redis_server import RedisServer
from tools.serve import start_ray


@pytest.fixture(scope="session")
def serve_url() -> Iterator[str]:
    """One local Ray + Serve for the session (http://127.0.0.1:PORT); apps are added with their own names.

    Logical CPUs: the ``served`` app's 3 engines and 2 ingress replicas, plus a second app of up to
    2 engines and an ingress (tests/e2e/test_autoscaling.py).
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
