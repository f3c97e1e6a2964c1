"""Chat TTFT with vLLM's per-request Gemma-4 parser state vs the shared state of parser_cache.

Each variant runs in its own process (the cache patches vLLM process-wide): one in-process engine
replica on local.yaml's model (the demo pair), then streaming chat requests, one at a time and all at
once, timing the first content chunk. Prints the ratio and writes JSON + PNG to ``bench/results/``.

    python -m bench.parser_ttft [--requests 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"


async def _measure(shared: bool, requests: int) -> dict[str, list[float]]:
    from config import AppConfig
    from deployments.engine.parser_cache import install
    from deployments.engine.replica import EngineReplica
    from serve_app.build import localize
    from tools.demo_pair import ensure_demo_pair

    ensure_demo_pair()
    if not shared:  # EngineReplica installs the cache; make that a no-op for the baseline
        import deployments.engine.parser_cache as pc

        pc._installed = True
    else:
        install()
    model = localize(AppConfig.from_yaml("serve_app/configs/local.yaml").models[0])
    replica = EngineReplica.__new__(EngineReplica)
    await EngineReplica.__init__(replica, model)

    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    async def one(i: int) -> float:
        req = ChatCompletionRequest(
            model=model.id,
            messages=[{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}],
            max_tokens=4,
            temperature=0,
            stream=True,
            chat_template_kwargs={"enable_thinking": True},
        )
        start = time.perf_counter()
        ttft = None
        async for kind, _, chunk in replica.chat(req):
            if ttft is None and kind == "sse" and '"content"' in chunk:
                ttft = time.perf_counter() - start
        return ttft if ttft is not None else time.perf_counter() - start

    await one(-1)  # warm-up: first request of each kind builds lazily initialised state
    sequential = [await one(i) for i in range(requests)]
    concurrent = list(await asyncio.gather(*[one(i) for i in range(requests)]))
    replica._engine.shutdown()
    return {"sequential": sequential, "concurrent": concurrent}


def _child(shared: bool, requests: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    print("RESULT " + json.dumps(asyncio.run(_measure(shared, requests))), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--child", choices=["shared", "per-request"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child == "shared", args.requests)
        return
    from tqdm import tqdm

    results: dict[str, dict[str, list[float]]] = {}
    for variant in tqdm(["per-request", "shared"], desc="engine variants"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.parser_ttft", "--child", variant, "--requests", str(args.requests)],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
        results[variant] = json.loads(line[len("RESULT ") :])
    summary = {
        v: {k: {"p50_s": statistics.median(xs), "max_s": max(xs)} for k, xs in r.items()} for v, r in results.items()
    }
    for k in ("sequential", "concurrent"):
        ratio = summary["per-request"][k]["p50_s"] / summary["shared"][k]["p50_s"]
        print(
            f"{k}: TTFT p50 {summary['per-request'][k]['p50_s']:.3f} s -> {summary['shared'][k]['p50_s']:.3f} s "
            f"({ratio:.1f}x faster)"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parser_ttft.json").write_text(json.dumps({"raw": results, "summary": summary}, indent=2))
    _plot(summary, RESULTS / "parser_ttft.png")


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ["sequential", "concurrent"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.35
    for j, variant in enumerate(["per-request", "shared"]):
        ax.bar(
            [i + j * width for i in range(len(kinds))],
            [summary[variant][k]["p50_s"] for k in kinds],
            width,
            label=f"parser state {variant}",
        )
    ax.set_xticks([i + width / 2 for i in range(len(kinds))], kinds)
    ax.set_ylabel("chat TTFT p50 (s)")
    ax.set_title("Gemma-4 parser state: per request vs shared (tiny pair, CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
