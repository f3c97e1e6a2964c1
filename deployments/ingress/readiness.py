"""Whether the endpoint can serve: what ``/health`` (a cloud load balancer's probe) answers.

Ready means every model that is not scaled to zero (``min_replicas > 0``) has a running engine replica,
as Serve's controller counts them. An ingress is up long before its first engine (minutes on a GPU
node): answering "ok" then puts the node in rotation and its requests wait at the ingress for the engine.
The controller is asked at most once per ``cache_s``, off the event loop.
"""

from __future__ import annotations

import asyncio
import time


class Readiness:
    """The models an ingress still waits for; ``deployments``: model id -> (Serve app, engine deployment).

    The engines' app is their handle's, not necessarily the ingress's own (an ingress may front another
    app's engines).
    """

    def __init__(self, deployments: dict[str, tuple[str, str]], cache_s: float = 1.0) -> None:
        self._deployments = deployments
        self._cache_s = cache_s
        self._waiting: list[str] = sorted(deployments)
        self._checked_at = -float("inf")
        self._lock = asyncio.Lock()

    async def waiting(self) -> list[str]:
        """Models (ids) that must be up and have no running replica yet."""
        async with self._lock:  # one controller call at a time, however many probes arrive
            if time.monotonic() - self._checked_at >= self._cache_s:
                self._waiting = await asyncio.to_thread(self._poll)
                self._checked_at = time.monotonic()
        return self._waiting

    def _poll(self) -> list[str]:
        from ray import serve

        apps = serve.status().applications
        waiting = []
        for model_id, (app, name) in self._deployments.items():
            status = apps.get(app)
            deployment = status.deployments.get(name) if status is not None else None
            if deployment is None or deployment.replica_states.get("RUNNING", 0) == 0:
                waiting.append(model_id)
        return waiting
