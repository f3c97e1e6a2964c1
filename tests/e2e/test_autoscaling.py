"""The SLO autoscaling policy on real Serve: burst -> 2 replicas, quiet -> 1 without cutting a request, idle -> 0,
and the first request after that waits for a cold start and succeeds.

One small app of its own (AR tiny model, 0..2 replicas, short delays) beside the session's ``served``
app, on the same Ray. The tests run in file order, each phase starting where the last one left off.
"""

from __future__ import annotations

import asyncio
import glob
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import openai
import pytest

from bench.prom import sample_total
from config import AppConfig, ModelConfig
from tests.paths import LOCAL_CONFIG
from tools.tiny_models import ensure_models

pytestmark = pytest.mark.e2e

APP = "autoscale-test"
MODEL = "tiny-autoscale"
PHASE_TIMEOUT_S = 420  # a replica start under contention on a shared 2-core machine takes 1-3 minutes


def scaling_config() -> AppConfig:
    """local.yaml's engine, AR, with a target batch of 4 and short delays so that a test sees every move."""
    base = AppConfig.from_yaml(LOCAL_CONFIG)
    target, _ = ensure_models()
    data = base.models[0].model_dump()
    data.update(
        id=MODEL,
        target=str(target),
        speculative=None,
        routing={"policy": "round_robin"},
        replicas={
            "num_cpus": 1,
            "min_replicas": 0,
            "initial_replicas": 1,
            "max_replicas": 2,
            "target_fill": 0.5,  # 4 of max_num_seqs 8
            "downscale_delay_s": 15,
            "autoscaling": {
                # Lenient latency objective: a tiny model on a shared CPU scales on its queue here; the
                # latency terms are unit-tested (tests/unit/autoscaling/test_policy.py).
                "slo": {
                    "ttft_p90_s": 60,
                    "tpot_p90_s": 2,
                    "replica_start_s": 10,
                    "trend_half_life_s": 5,
                    "scale_to_zero_idle_s": 15,
                },
                "stats_window_s": 10,
            },
        },
    )
    return base.model_copy(update={"name": APP, "models": [ModelConfig.model_validate(data)]})


@dataclass
class Scaling:
    url: str
    config: AppConfig
    outcomes: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, problem or "")

    def replicas(self) -> dict[str, int]:
        """Engine replicas by state (RUNNING, STARTING, STOPPING, ...)."""
        from ray import serve

        app = serve.status().applications[APP]
        deployment = app.deployments[self.config.models[0].deployment_name()]
        return {str(getattr(k, "value", k)): v for k, v in deployment.replica_states.items()}

    def running(self) -> int:
        return self.replicas().get("RUNNING", 0)


@pytest.fixture(scope="module")
def scaling(serve_url: str) -> Iterator[Scaling]:
    from ray import serve

    from serve_app.build import build_from_config

    config = scaling_config()
    serve.run(build_from_config(config), name=APP, route_prefix=f"/{APP}")
    try:
        yield Scaling(url=f"{serve_url}/{APP}/v1", config=config)
    finally:
        serve.delete(APP)


async def _one(client: openai.AsyncOpenAI, max_tokens: int, out: list[tuple[float, float, str]]) -> None:
    """One streamed completion of exactly ``max_tokens`` tokens; records what went wrong, if anything."""
    start = time.monotonic()
    problem = ""
    try:
        stream = await client.completions.create(
            model=MODEL,
            prompt="Count on:",
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        finish, tokens = None, None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        if finish != "length" or tokens != max_tokens:
            problem = f"cut: finish={finish} tokens={tokens}"
    except Exception as exc:  # noqa: BLE001 - any failure is what the test reports
        problem = f"failed: {exc!r}"
    out.append((start, time.monotonic(), problem))


async def _load_until(s: Scaling, concurrency: int, max_tokens: int, done) -> None:
    """Keep ``concurrency`` requests in flight until ``done()`` (asked once a second) or the phase times out.

    A request that ends is replaced at once, and ``done()`` is asked only then, with the requests in flight:
    what it sees change, changed under load. (Asked after waiting for every request to end, it saw the
    fleet change with nothing in flight whenever the requests ended together, as two started together do.)
    """
    client = openai.AsyncOpenAI(base_url=s.url, api_key="unused", max_retries=0, timeout=PHASE_TIMEOUT_S)
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    tasks: set[asyncio.Task] = set()
    ask_at = 0.0
    try:
        while time.monotonic() < deadline:
            while len(tasks) < concurrency:
                tasks.add(asyncio.create_task(_one(client, max_tokens, s.outcomes)))
            if time.monotonic() >= ask_at:
                if await asyncio.to_thread(done):
                    break
                ask_at = time.monotonic() + 1.0
            wait_s = max(0.0, ask_at - time.monotonic())
            _, tasks = await asyncio.wait(tasks, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*tasks)
    finally:
        await client.close()


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + PHASE_TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


def test_burst_scales_up_within_bounds(scaling: Scaling):
    _wait(lambda: scaling.running() == 1, "the initial replica")
    seen: list[dict[str, int]] = []

    def two_running() -> bool:
        seen.append(scaling.replicas())
        return seen[-1].get("RUNNING", 0) == 2

    asyncio.run(_load_until(scaling, concurrency=16, max_tokens=48, done=two_running))
    assert seen[-1].get("RUNNING") == 2, seen[-1]
    assert max(sum(v for k, v in st.items() if k in ("RUNNING", "STARTING")) for st in seen) <= 2  # max_replicas
    assert [o for o in scaling.outcomes if o[2]] == []


def test_quiet_scales_down_without_cutting_requests(scaling: Scaling):
    """Two long streams stay in flight (round robin: one per replica) while one replica leaves."""
    scaling.outcomes.clear()
    left_at: list[float] = []

    def one_left() -> bool:
        if scaling.replicas().get("RUNNING") == 1 and not left_at:
            left_at.append(time.monotonic())
        return bool(left_at)  # then stop adding requests; those in flight finish (or are cut)

    asyncio.run(_load_until(scaling, concurrency=2, max_tokens=160, done=one_left))
    assert left_at, "never scaled down to one replica"
    _wait(lambda: scaling.replicas().get("STOPPING", 0) == 0, "the leaving replica to finish")
    assert [o for o in scaling.outcomes if o[2]] == [], "a request failed or was cut during downscale"
    assert any(start < left_at[0] < end for start, end, _ in scaling.outcomes), "no request spanned the downscale"
    # Not back up; possibly already at zero: the idle clock (15 s) starts when the last stream ends, and the leaving
    # replica's shutdown may take longer than that on a loaded machine (the next test waits for zero).
    assert scaling.running() <= 1


def _routers_see(scaling: Scaling) -> float:
    """Running replicas the ingress's routers see (what admission reads to tell starting from overloaded)."""
    resp = httpx.get(scaling.url.removesuffix("/v1") + "/metrics", timeout=60)
    assert resp.status_code == 200, resp.text[:500]  # a model at zero replicas must not fail the scrape
    seen = sample_total(resp.text, "dflash_router_replicas", model=MODEL)
    assert seen is not None, "the router publishes its replica count: " + " | ".join(
        ln for ln in resp.text.splitlines() if ln.startswith("dflash_router")
    )
    return seen


def test_idle_scales_to_zero_and_first_request_waits_for_a_replica(scaling: Scaling):
    _wait(lambda: scaling.replicas().get("RUNNING", 0) == 0 and not scaling.replicas().get("STOPPING"), "zero")
    _wait(lambda: _routers_see(scaling) == 0, "the routers to see zero replicas")  # a full queue now answers 503
    client = openai.OpenAI(base_url=scaling.url, api_key="unused", max_retries=0, timeout=PHASE_TIMEOUT_S)
    reply = client.completions.create(model=MODEL, prompt="Wake up", max_tokens=4, temperature=0)
    assert reply.usage.completion_tokens == 4
    assert scaling.running() == 1
    assert _routers_see(scaling) >= 1


def test_decisions_are_logged_and_exported(scaling: Scaling):
    import ray

    deployment = scaling.config.models[0].deployment_name()
    logs = glob.glob(os.path.join(ray._private.worker._global_node.get_logs_dir_path(), "serve", "controller_*.log"))
    text = "".join(open(p, encoding="utf-8", errors="replace").read() for p in logs)
    for move in ("1 -> 2 replicas (up:", "2 -> 1 replicas (down:", "1 -> 0 replicas (down:idle"):
        assert f"autoscaling {APP}/{deployment}: {move}" in text, move

    port = ray.nodes()[0]["MetricsExportPort"]
    want = ("ray_dflash_autoscaler_scale_decisions", "ray_dflash_autoscaler_target_replicas")
    deadline = time.monotonic() + 60  # the metrics agent exports every few seconds
    while True:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        ours = [line for line in page.splitlines() if f'deployment="{deployment}"' in line]
        if all(any(line.startswith(name) for line in ours) for name in want):
            break
        assert time.monotonic() < deadline, f"autoscaler metrics missing: {ours}"
        time.sleep(2)
    assert any('reason="up:' in line for line in ours if line.startswith(want[0])), ours
