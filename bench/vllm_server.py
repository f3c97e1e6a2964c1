"""Bare vLLM OpenAI servers as subprocesses: what a user of a peer router runs behind it.

Every server is started from the argv our engine replica itself parses (``vllm_serve_argv``), so a
benchmark that compares our stack with bare vLLM, or our router with a peer router in front of bare
vLLM, runs one engine configuration on both sides by construction. The engine's own counters
(``/metrics``) are the ground truth for prefix-cache hits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent

# vLLM's own OpenAI server, with the parser cache our engine replica installs (deployments/engine/parser_cache.py):
# without it vLLM 0.32 rebuilds Gemma-4's reasoning/tool parsers for every chat request (seconds of CPU
# each on a small machine), and a comparison would measure that fix instead of our layer or our router.
_BARE_SERVER = (
    "from deployments.engine import parser_cache; parser_cache.install(); import runpy; "
    "runpy.run_module('vllm.entrypoints.launchers.api_server.entry', run_name='__main__', alter_sys=True)"
)


def start_vllm(
    model: Any,
    port: int,
    log_path: Path,
    gpu: str | None = None,
    kv_events_config: dict[str, Any] | None = None,
    dev_mode: bool = False,
) -> subprocess.Popen[bytes]:
    """vLLM's OpenAI server for ``model`` (our engine argv), in its own process group, on GPU ``gpu``.

    ``dev_mode`` turns on vLLM's development endpoints (``/reset_prefix_cache``), which a benchmark uses to
    start every arm from an empty cache without restarting the engine.
    """
    from deployments.engine.engine_args import vllm_serve_argv

    argv = [sys.executable, "-c", _BARE_SERVER, *vllm_serve_argv(model, kv_events_config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    env |= {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}
    env |= {"VLLM_SERVER_DEV_MODE": "1"} if dev_mode else {}
    log = log_path.open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=REPO)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 900, path: str = "/health") -> None:
    """Poll ``url + path`` until it answers 200; raise if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} for {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, SIGKILL it after a minute."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass(frozen=True)
class CacheCounters:
    """One engine's prefix-cache and prompt counters at one scrape (or a difference of two)."""

    queries: float
    hits: float
    prompt_tokens: float

    def __sub__(self, before: CacheCounters) -> CacheCounters:
        return CacheCounters(
            self.queries - before.queries, self.hits - before.hits, self.prompt_tokens - before.prompt_tokens
        )


_COUNTERS = {
    "vllm:prefix_cache_queries": "queries",
    "vllm:prefix_cache_hits": "hits",
    "vllm:prompt_tokens": "prompt_tokens",
}


def cache_counters(url: str) -> CacheCounters:
    """The engine's counters from its ``/metrics`` (summed over engines and models)."""
    totals = dict.fromkeys(_COUNTERS.values(), 0.0)
    text = httpx.get(url + "/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        field = _COUNTERS.get(family.name)
        if field is not None:
            totals[field] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return CacheCounters(**totals)


def reset_prefix_cache(url: str) -> None:
    """Empty the engine's prefix cache (needs ``dev_mode``); vLLM refuses while requests hold blocks."""
    httpx.post(url + "/reset_prefix_cache", timeout=60).raise_for_status()
