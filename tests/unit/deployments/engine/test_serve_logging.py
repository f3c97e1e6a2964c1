"""Serve's replica log handler survives vLLM's logging setup (a real ``dictConfig`` by vLLM's own code)."""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray.serve._private.constants import SERVE_LOGGER_NAME
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging

from deployments.engine.serve_logging import serve_log_handlers_kept


@pytest.fixture
def serve_file_log(tmp_path: Path) -> Iterator[tuple[logging.handlers.MemoryHandler, Path]]:
    """The handler pair Serve's configure_component_logger installs: a MemoryHandler over a file handler."""
    path = tmp_path / "replica.log"
    memory = logging.handlers.MemoryHandler(100, flushLevel=logging.ERROR, target=logging.FileHandler(path))
    serve_logger = logging.getLogger(SERVE_LOGGER_NAME)
    serve_logger.addHandler(memory)
    yield memory, path
    serve_logger.removeHandler(memory)
    memory.close()


def test_vllm_logging_setup_closes_serves_handler_without_the_guard(serve_file_log):
    memory, _ = serve_file_log
    configure_logging(LoggingConfig(configure_logging=True))
    assert memory.target is None  # the failure the guard exists for: if vLLM stops doing this, drop the guard


def test_guard_keeps_serves_handler_writing_its_file(serve_file_log):
    memory, path = serve_file_log
    target = memory.target
    with serve_log_handlers_kept():
        configure_logging(LoggingConfig(configure_logging=True))
    assert memory.target is target
    logging.getLogger(SERVE_LOGGER_NAME).error("after vLLM's logging setup")
    assert "after vLLM's logging setup" in path.read_text()
