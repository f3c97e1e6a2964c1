"""A closed-loop load generator for OpenAI chat endpoints: N requests at a fixed concurrency, streamed.

Each request is streamed so the client sees what a user sees: time to the first generated chunk
(TTFT), the gaps between chunks (ITL; with DFlash one chunk often carries several tokens) and the
time per output token after the first (TPOT). Token counts come from the server's ``usage`` (the
``include_usage`` stream option), as in z-lab's harness; throughput is generated tokens over the run's
wall time. The same code drives every endpoint compared, so differences come from the servers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np


@dataclass
class RequestResult:
    ttft_s: float | None = None
    latency_s: float = 0.0
    output_tokens: int = 0
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class RunResult:
    """One run at one concurrency: its requests and its wall time."""

    concurrency: int
    wall_s: float
    requests: list[RequestResult]

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.requests if r.error is None]
        tokens = sum(r.output_tokens for r in ok)
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        itl = [g for r in ok for g in r.itl_s]
        tpot = [r.tpot_s for r in ok if r.tpot_s is not None]
        return {
            "concurrency": self.concurrency,
            "requests": len(self.requests),
            "failed": len(self.requests) - len(ok),
            "errors": sorted({r.error for r in self.requests if r.error})[:5],
            "output_tokens": tokens,
            "wall_s": self.wall_s,
            "tokens_per_s": tokens / self.wall_s if self.wall_s > 0 else 0.0,
            "ttft_p50_s": percentile(ttft, 50),
            "ttft_p99_s": percentile(ttft, 99),
            "itl_p50_s": percentile(itl, 50),
            "itl_p99_s": percentile(itl, 99),
            "tpot_mean_s": float(np.mean(tpot)) if tpot else None,
        }


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _has_output(chunk: dict[str, Any]) -> bool:
    """Whether an SSE chunk carries generated text (answer, reasoning or a tool call)."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or choice  # chat chunks have a delta, completions a text
        if delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content") or delta.get("text"):
            return True
        if delta.get("tool_calls"):
            return True
    return False


async def stream_chat(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    """One streamed chat completion, timed chunk by chunk."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    result = RequestResult()
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                result.error = f"HTTP {resp.status_code}: {text[:200]}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = str(chunk["error"].get("message", chunk["error"]))[:200]
                    continue
                now = time.perf_counter()
                if _has_output(chunk):
                    if result.ttft_s is None:
                        result.ttft_s = now - start
                    else:
                        result.itl_s.append(now - last)
                    last = now
                usage = chunk.get("usage")
                if usage:
                    result.output_tokens = int(usage.get("completion_tokens") or 0)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.latency_s = time.perf_counter() - start
    return result


async def run_closed_loop(
    url: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 3600,
    on_done: Callable[[RequestResult], None] | None = None,
) -> RunResult:
    """Send ``bodies`` with at most ``concurrency`` in flight, each starting as soon as a slot frees."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while not queue.empty():
                r = await stream_chat(client, url, queue.get_nowait())
                results.append(r)
                if on_done is not None:
                    on_done(r)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return RunResult(concurrency=concurrency, wall_s=wall, requests=results)
