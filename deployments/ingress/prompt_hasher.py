"""A rendered prompt's block hashes, made in the render pool as this process's router of its model would make them.

The prefix-aware router needs a prompt's chained block hashes (SHA-256 over up to ``max_prefix_blocks`` blocks):
CPU work that grows with the prompt. Made by the router, it runs on the loop Serve routes on, which every request
of the process waits on; made here, it runs in the ingress's render pool beside the chat template, under the same
deadline. The router publishes how it hashes (``deployments.router.prompt_hashing``) and takes the hashes only when
they were made that way; before a router has published, the prompt goes unhashed and the router hashes it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from contracts.engine_report import PromptHashing
from deployments.router import prompt_hashing
from routing.hashing import BlockHasher


class PromptHasher:
    """One memoised :class:`BlockHasher` per NONE_HASH seed, shared by the pool's threads behind a lock."""

    def __init__(self) -> None:
        self._hashers: dict[str, BlockHasher] = {}
        self._lock = threading.Lock()

    def hash(self, model_id: str, token_ids: Sequence[int]) -> tuple[tuple[int, ...], PromptHashing | None]:
        """``token_ids``' block hashes as ``model_id``'s router hashes, and how; ``((), None)`` before it says how."""
        hashing = prompt_hashing.published(model_id)
        if hashing is None:
            return (), None
        with self._lock:
            hasher = self._hashers.get(hashing.seed)
            if hasher is None:
                hasher = self._hashers[hashing.seed] = BlockHasher(seed=hashing.seed)
            return tuple(hasher.hashes(token_ids, hashing.geometry, hashing.max_blocks)), hashing
