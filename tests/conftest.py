"""Fixtures every tier may use: the repository as working directory, and a real redis-server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.paths import REPO_ROOT
from tools.redis_server import RedisServer


@pytest.fixture(scope="session", autouse=True)
def _repo_cwd() -> None:
    """Configs name models by ./ paths relative to the repository root."""
    os.chdir(REPO_ROOT)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
