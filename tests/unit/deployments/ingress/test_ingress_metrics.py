"""The ingress's series and the engine scrape (deployments/ingress/ingress_metrics.py), with fake handles."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from deployments.ingress.ingress_metrics import CachedText, IngressMetrics, engine_exposition, scrape_replicas

VLLM_TEXT = "# HELP vllm:num_requests_running r\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 2\n"


class _Broadcast:
    def __init__(self, results: list[Any] | Exception) -> None:
        self._results = results

    async def results_async(self, timeout_s: float, return_exceptions: bool) -> list[Any]:
        assert return_exceptions
        if isinstance(self._results, Exception):
            raise self._results
        return self._results


class _Handle:
    """A deployment handle whose broadcast answers ``results`` (or raises them)."""

    deployment_name = "Engine-m"

    def __init__(self, results: list[Any] | Exception) -> None:
        self._results = results

    def broadcast(self, method: str) -> _Broadcast:
        assert method == "metrics_text"
        return _Broadcast(self._results)


def test_series_keep_their_names_and_labels():
    metrics = IngressMetrics()
    metrics.observe("m", "/v1/completions", 200, time.perf_counter())
    metrics.rejected.labels("m", "queue_full").inc()
    metrics.retries.labels("m").inc()
    text = metrics.own_text()
    for line in (
        'dflash_serve_requests_total{endpoint="/v1/completions",model="m",status="200"} 1.0',
        'dflash_serve_request_duration_seconds_count{endpoint="/v1/completions",model="m"} 1.0',
        'dflash_serve_admission_rejections_total{model="m",reason="queue_full"} 1.0',
        'dflash_serve_dispatch_retries_total{model="m"} 1.0',
        "# TYPE dflash_serve_time_to_first_byte_seconds histogram",
    ):
        assert line in text, line


def test_replicas_that_fail_to_answer_are_left_out():
    handle = _Handle([VLLM_TEXT, RuntimeError("dead replica")])
    assert asyncio.run(scrape_replicas(handle, "metrics_text")) == [VLLM_TEXT]  # type: ignore[arg-type]
    assert asyncio.run(scrape_replicas(_Handle(TimeoutError()), "metrics_text")) == []  # type: ignore[arg-type]


def test_engine_exposition_sums_replicas_and_counts_those_that_answered():
    engines = {"m": _Handle([VLLM_TEXT, VLLM_TEXT]), "cold": _Handle(TimeoutError())}
    text = asyncio.run(engine_exposition(engines))  # type: ignore[arg-type]
    assert "vllm:num_requests_running 4" in text
    assert 'dflash_serve_engine_replicas{model="m"} 2' in text
    assert 'dflash_serve_engine_replicas{model="cold"} 0' in text


def test_a_scrape_storm_costs_one_fan_out_a_second():
    """50 scrapes at once share one fetch (the broadcast to every replica); the next second fetches again."""
    now = [100.0]
    calls: list[float] = []

    async def fetch() -> str:
        calls.append(now[0])
        await asyncio.sleep(0.01)  # the broadcast takes a while: callers arriving meanwhile wait for it
        return f"text {len(calls)}"

    async def run() -> None:
        cached = CachedText(fetch, ttl_s=1.0, clock=lambda: now[0])
        assert set(await asyncio.gather(*(cached.get() for _ in range(50)))) == {"text 1"}
        now[0] += 0.9
        assert await cached.get() == "text 1"
        now[0] += 0.2
        assert await cached.get() == "text 2"

    asyncio.run(run())
    assert calls == pytest.approx([100.0, 101.1])
