"""The ingress's Prometheus series, and ``/metrics``: the whole app's series, summed over its replicas.

Each ingress replica counts what it answered (requests by status, time to first byte, duration,
admission refusals, dispatch retries) in a registry of its own. A scrape reaches one ingress replica
through the load balancer, so that replica asks every ingress replica and every engine replica for
their expositions and sums them (:mod:`deployments.ingress.metrics_merge`): the scrape sees the whole
front and every model, not whichever replica answered. That fan-out is cached for
``ingress.metrics_cache_s`` (:class:`CachedText`), so however many scrapes arrive, the replicas answer
one broadcast per that time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.error_kind import error_kind
from deployments.ingress.metrics_merge import merge_expositions
from deployments.router import metrics as router_metrics

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class CachedText:
    """``fetch()``'s text, fetched at most once per ``ttl_s`` however many callers ask at once.

    Callers that arrive while a fetch runs wait for it and share its answer; one lock, no stampede.
    """

    def __init__(
        self, fetch: Callable[[], Awaitable[str]], ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._clock = clock
        self._text = ""
        self._at = -math.inf
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._clock() - self._at >= self._ttl_s:
                self._text = await self._fetch()
                self._at = self._clock()
            return self._text


class IngressMetrics:
    """The ingress's own Prometheus series (per ingress replica)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dflash_serve_requests",
            "Requests answered by the ingress, by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "dflash_serve_time_to_first_byte_seconds",
            "Time from request arrival at the ingress to its first response byte.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.rejected = Counter(
            "dflash_serve_admission_rejections",
            "Requests refused by the ingress's admission (queue_full: 429; starting, queue_timeout: 503), by model.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "dflash_serve_dispatch_retries",
            "Requests sent again to another replica because theirs died before the first byte, by model.",
            ["model"],
            registry=self.registry,
        )
        self.render_timeouts = Counter(
            "dflash_serve_render_timeouts",
            "Requests routed cold because their prompt did not render within ingress.render_timeout_s, by model.",
            ["model"],
            registry=self.registry,
        )
        self.bodies = Counter(
            "dflash_serve_request_bodies",
            "Generation request bodies by how the ingress got them: carried in the request by Serve's proxy "
            "(deployments/proxy_body.py) or fetched from the proxy in a second call.",
            ["how"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dflash_serve_request_duration_seconds",
            "Time from request arrival at the ingress to its last response byte.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def observe(self, model: str, endpoint: str, status: int, start: float) -> None:
        """A request answered in full (``start``: its arrival, on ``time.perf_counter``)."""
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model, endpoint).observe(time.perf_counter() - start)

    def own_text(self) -> str:
        """This replica's series and its routers' (they run in this process)."""
        return generate_latest(self.registry).decode() + generate_latest(router_metrics.REGISTRY).decode()


async def scrape_replicas(handle: DeploymentHandle, method: str) -> list[str]:
    """The exposition texts of every replica of ``handle`` that answered within 5 s.

    A scrape must not fail because some replica (or all: a model scaled to zero) cannot answer.
    """
    try:
        results = await handle.broadcast(method).results_async(timeout_s=5, return_exceptions=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the broadcast means "no answers"
        logger.debug("no %s from %s: %s", method, handle.deployment_name, error_kind(exc))
        return []
    return [r for r in results if isinstance(r, str)]


async def ingress_exposition(own: IngressMetrics) -> str:
    """Every ingress replica's own and routing series, summed (``own`` alone when none answers).

    Each replica answers through its ``own_metrics_text`` method (:meth:`IngressMetrics.own_text`).
    """
    ctx = serve.get_replica_context()
    handle = serve.get_deployment_handle(ctx.deployment, app_name=ctx.app_name)
    texts = await scrape_replicas(handle, "own_metrics_text") or [own.own_text()]
    return merge_expositions(texts, prefix="dflash_")


async def engine_exposition(engines: dict[str, DeploymentHandle]) -> str:
    """vLLM metrics of every engine replica, summed per model, plus replica counts."""
    texts: list[str] = []
    lines = [
        "# HELP dflash_serve_engine_replicas Engine replicas that answered this scrape.",
        "# TYPE dflash_serve_engine_replicas gauge",
    ]
    for model_id, handle in engines.items():
        answered = await scrape_replicas(handle, "metrics_text")
        texts += answered
        lines.append(f'dflash_serve_engine_replicas{{model="{model_id}"}} {len(answered)}')
    return merge_expositions(texts) + "\n".join(lines) + "\n"
