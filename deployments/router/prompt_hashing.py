"""How each model's request router in this process hashes prompts, as it last published: for the ingress.

Serve builds request routers inside the process that holds the deployment handle (the ingress replica). A router
hashes a request's prompt in the block geometry its replicas report; the ingress renders the prompt in its render
pool and, with the router's :class:`~contracts.engine_report.PromptHashing` read from here, hashes it there too,
so the router's loop (the ingress's own, with Serve's router in the request loop) only compares two hashing specs.
Until a router has published, and whenever the ingress's hashes were made under another spec, the router hashes
the token ids itself. This module is that one channel, process-local by design (as ``replica_counts``).
"""

from __future__ import annotations

from contracts.engine_report import PromptHashing

_published: dict[str, PromptHashing] = {}


def publish(model: str, hashing: PromptHashing) -> None:
    """A router of ``model`` hashes prompts as ``hashing`` says, from now on."""
    _published[model] = hashing


def published(model: str) -> PromptHashing | None:
    """How a router of ``model`` in this process hashes prompts, or None before one has routed a request."""
    return _published.get(model)
