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
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.datasets import load_prompts
from bench.load import RequestResult, RunResult, run_closed_loop
from bench.machine import describe_machine
from bench.process_cpu import ROLES, snapshot
from bench.vllm_server import start_vllm, stop, wait_healthy

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
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
    cpu: dict[str, dict[str, float]] = {s: {} for s in SIDES}

    def done(_: RequestResult) -> None:
        bar.update()

    for side in SIDES:  # warm both (first requests pay lazy initialisation)
        asyncio.run(run_closed_loop(urls[side], bodies(prompts[:c], model, tokens), c))
    for r in range(rounds):
        batch = bodies(prompts[(r + 1) * per_round : (r + 2) * per_round], model, tokens)
        for side in SIDES if r % 2 == 0 else tuple(reversed(SIDES)):
            before = snapshot(roots)[side]
            runs[side].append(asyncio.run(run_closed_loop(urls[side], batch, c, on_done=done)))
            after = snapshot(roots)[side]
            for role in after:
                cpu[side][role] = cpu[side].get(role, 0.0) + after[role] - before[role]
    out = compare(runs)
    for side in SIDES:  # CPU milliseconds per generated token, by process role, over every round of the side
        tokens_out = out[side]["output_tokens"]
        out[side]["cpu_ms_per_token"] = {
            role: round(s * 1000 / tokens_out, 3) for role, s in cpu[side].items() if s > 0 and tokens_out
        }
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = list(results["by_concurrency"])
    cells = [results["by_concurrency"][c] for c in cs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(cs, [x["throughput_ratio"] or 0 for x in cells], color="tab:blue")
    ax1.axhline(0.97, color="tab:red", linestyle="--", label="goal 0.97")
    ax1.set_title("dflash-serve / bare vLLM throughput")
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
    """CPU milliseconds per generated token by process role, bare vLLM and ours side by side."""
    lines = ["| c | process | bare vLLM ms/token | dflash-serve ms/token |", "|---|---|---|---|"]
    for c, x in results["by_concurrency"].items():
        a, b = x["vllm"].get("cpu_ms_per_token", {}), x["dflash_serve"].get("cpu_ms_per_token", {})
        for role in ROLES:
            if role in a or role in b:
                lines.append(f"| {c} | {role} | {a.get(role, '–')} | {b.get(role, '–')} |")
        lines.append(f"| {c} | **total** | {sum(a.values()):.3f} | {sum(b.values()):.3f} |")
    return "\n".join(lines) + "\n"


def report(results: dict[str, Any]) -> str:
    lines = [
        "| c | tok/s vLLM | tok/s ours | ratio | TTFT p50 vLLM | added TTFT p50 | added TTFT p99 "
        "| added ITL p50 | added ITL p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: float | None, spec: str = ".1f") -> str:
        return format(v, spec) if v is not None else "–"

    for c, x in results["by_concurrency"].items():
        ttft = x["vllm"]["ttft_p50_s"]
        lines.append(
            f"| {c} | {f(x['vllm']['tokens_per_s'])} | {f(x['dflash_serve']['tokens_per_s'])} "
            f"| {f(x['throughput_ratio'], '.3f')} | {f(ttft * 1000 if ttft else None)} ms "
            f"| {f(x['added_ttft_p50_ms'])} ms | {f(x['added_ttft_p99_ms'])} ms "
            f"| {f(x['added_itl_p50_ms'])} ms | {f(x['added_itl_p99_ms'])} ms |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_app/configs/local.yaml", help="AppConfig; its first model is used")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency")
    parser.add_argument("--requests", type=int, default=0, help="requests per round (default: max(8, c))")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="c=1,4, 2 rounds, 32 tokens")
    parser.add_argument("--out", type=Path, default=RESULTS / "overhead")
    parser.add_argument("--vllm-gpu", default=None, help="GPU node: the bare vLLM side's GPU (e.g. 1)")
    parser.add_argument("--serve-gpus", default=None, help="GPU node: the GPUs Ray may give our replica (e.g. 0)")
    args = parser.parse_args()
    if args.serve_gpus is not None:  # read by Ray when it starts below: each side on its own GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = args.serve_gpus
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from config import AppConfig
    from serve_app.build import localize
    from tools.demo_pair import ensure_demo_pair
    from tools.ports import free_port
    from tools.serve import serving

    if args.quick:
        args.concurrency, args.rounds, args.max_tokens = "1,4", 2, 32
    ensure_demo_pair()
    base = AppConfig.from_yaml(args.config)
    model = localize(base.models[0])
    one = model.replicas.model_copy(update={"min_replicas": 1, "max_replicas": 1, "initial_replicas": None})
    # Bare vLLM queues every request until it is served; so does our side here (admission waits as long as
    # a request may take), or a slow machine's c=32 would compare 503s from our queue timeout with answers.
    admission = base.ingress.admission.model_copy(update={"queue_timeout_s": base.ingress.request_timeout_s})
    config = base.model_copy(
        update={
            "name": "bench-overhead",
            "models": [model.model_copy(update={"replicas": one})],
            "ingress": base.ingress.model_copy(update={"admission": admission}),
        }
    )
    prompts = load_prompts("gsm8k")
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vllm_port = free_port()
    proc = start_vllm(model, vllm_port, args.out.with_suffix(".vllm.log"), args.vllm_gpu)
    results: dict[str, Any] = {
        "label": f"{model.id} (speculative={model.speculative is not None}) on {describe_machine()}, "
        f"max_tokens={args.max_tokens}",
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
    print("\n" + results["label"] + "\n\n" + report(results) + "\n" + cpu_report(results))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
