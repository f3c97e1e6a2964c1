"""Keep Serve's replica log handlers working after vLLM configures logging in the replica process.

vLLM applies ``logging.config.dictConfig`` when its engine starts, and ``dictConfig`` closes every
handler the process has, among them the ``MemoryHandler`` through which Serve's replica logger writes
its file. A closed ``MemoryHandler`` forgets its target: the replica's Serve log lines are dropped from
then on, and Serve's ``is_allocated`` (which reads that target to name the log file) raises, so a Serve
controller that restarts (a head restart under GCS fault tolerance) stops every engine replica it
recovers instead of adopting it.
"""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Iterator
from contextlib import contextmanager

from ray.serve._private.constants import SERVE_LOGGER_NAME


@contextmanager
def serve_log_handlers_kept() -> Iterator[None]:
    """Give Serve's buffering handlers back the targets that a ``dictConfig`` inside took from them.

    The targets are file handlers; a closed one reopens its file (append mode) on its next record.
    """
    handlers = logging.getLogger(SERVE_LOGGER_NAME).handlers
    targets = [(h, h.target) for h in handlers if isinstance(h, logging.handlers.MemoryHandler)]
    try:
        yield
    finally:
        for handler, target in targets:
            if handler.target is None and target is not None:
                handler.setTarget(target)
