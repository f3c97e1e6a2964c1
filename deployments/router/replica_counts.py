"""How many replicas of each model Serve runs, as this process's request routers last heard: for the ingress.

Serve builds request routers itself, inside the process that holds the deployment handle (the ingress
replica), and passes them nothing of ours; so the routers record each model's replica count here and the
ingress, in the same process, reads it to tell a model that is starting (no replica yet: its requests
wait) from one that is overloaded. This module is that one channel, process-local by design.
"""

from __future__ import annotations

_counts: dict[str, int] = {}


def record(model: str, replicas: int) -> None:
    """A router of ``model`` was told by Serve that ``replicas`` replicas run now."""
    _counts[model] = replicas


def running_replicas(model: str) -> int | None:
    """Replicas of ``model`` Serve runs now, or None before a router of this process has heard of it."""
    return _counts.get(model)
