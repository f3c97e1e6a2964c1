"""The DFlash table, reproduced through any OpenAI endpoint: AR vs DFlash tokens/s, speedup and tau.

Runs the five tasks of z-lab's table (MATH-500, GSM8K, HumanEval, MBPP, MT-Bench first turns) at each
concurrency, for the autoregressive baseline and for DFlash, the way z-lab's ``dflash/benchmark.py``
does on a server: greedy (temperature 0, top_p 1, top_k 1), thinking on, ``num_prompts`` measured
prompts cycled through the set after ``concurrency`` warmup prompts, throughput = generated tokens /
wall time. The acceptance length comes from the deltas of the endpoint's ``/metrics`` counters.

The two arms are two endpoints (``--base-url``/``--model`` for DFlash, ``--ar-base-url``/``--ar-model``
for AR), or one app run twice: ``--only dflash``, redeploy with ``speculative=off``, ``--only ar`` with
the same ``--out`` (results are merged). ``--quick`` serves the tiny CPU demo pair itself (DFlash and its
AR twin in one app) with a few prompts and short outputs: it exercises the harness, not the hardware.
``--local`` serves the same app with the settings given (the demo pair's DFlash/AR speed through the stack).

Output: ``<out>.json``, ``<out>.md`` (our figures beside the reference B300 run) and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.datasets import TASKS, load_prompts, sample
from bench.load import run_closed_loop
from bench.machine import describe_machine
from bench.prom import SpecCounters, read_counters
from bench.settle import settle
from sim.seed_table import REFERENCE

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("ar", "dflash")

# The reference run (one B300) lives in sim.seed_table: the simulators are calibrated to it.
TASK_TITLES = {"math500": "Math500", "gsm8k": "GSM8K", "humaneval": "HumanEval", "mbpp": "MBPP", "mt-bench": "MT-Bench"}


@dataclass(frozen=True)
class Endpoint:
    """One arm's server: where to send requests and which ``model`` to name."""

    base_url: str  # without /v1: /v1/chat/completions and /metrics hang off it
    model: str
    api_key: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def scrape(self) -> SpecCounters:
        resp = httpx.get(self.base_url + "/metrics", headers=self.headers, timeout=60)
        resp.raise_for_status()
        return read_counters(resp.text, self.model)


@dataclass(frozen=True)
class Settings:
    tasks: tuple[str, ...]
    concurrency: tuple[int, ...]
    num_prompts: int
    max_tokens: int
    thinking: bool
    timeout_s: float


# What --quick (and the e2e test of the harness) runs: the trained shape and a chat, a few short prompts at two
# concurrencies; the unit tests format every task.
QUICK = Settings(("gsm8k", "mt-bench"), (1, 4), num_prompts=4, max_tokens=32, thinking=True, timeout_s=600)


def request_bodies(prompts: list[str], model: str, max_tokens: int, thinking: bool) -> list[dict[str, Any]]:
    """Chat requests as z-lab's harness sends them to vLLM (greedy, first turn only)."""
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": p}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "top_k": 1,
            "chat_template_kwargs": {"enable_thinking": thinking},
        }
        for p in prompts
    ]


def measure(endpoint: Endpoint, prompts: list[str], concurrency: int, s: Settings, bar: tqdm) -> dict[str, Any]:
    """One (arm, task, concurrency) cell: warm up with ``concurrency`` prompts, then measure ``num_prompts``."""
    bodies = request_bodies(sample(prompts, s.num_prompts + concurrency), endpoint.model, s.max_tokens, s.thinking)
    url = endpoint.base_url + "/v1/chat/completions"
    warmup = bodies[:concurrency]
    asyncio.run(run_closed_loop(url, warmup, concurrency, headers=endpoint.headers, timeout_s=s.timeout_s))
    before = endpoint.scrape()
    run = asyncio.run(
        run_closed_loop(
            url,
            bodies[concurrency:],
            concurrency,
            headers=endpoint.headers,
            timeout_s=s.timeout_s,
            on_done=lambda _: bar.update(),
        )
    )
    spec = endpoint.scrape() - before
    return run.summary() | {
        "tau": spec.acceptance_length,
        "acceptance_rate": spec.acceptance_rate,
        "per_position_acceptance": spec.per_position_acceptance(),
        "server_generation_tokens": spec.generation_tokens,
    }


def run_arms(endpoints: dict[str, Endpoint], arms: tuple[str, ...], s: Settings) -> dict[str, dict[str, Any]]:
    """Every task at every concurrency for each arm: ``{arm: {task: {str(concurrency): cell}}}``.

    Cell by cell, the arms taking turns (and alternating who goes first), so that drift on a shared
    machine falls on both arms rather than on whichever ran second.
    """
    out: dict[str, dict[str, Any]] = {arm: {} for arm in arms}
    total = len(arms) * len(s.tasks) * len(s.concurrency) * s.num_prompts
    cell_index = 0
    with tqdm(total=total, desc="dflash table", unit="req") as bar:
        for task in s.tasks:
            prompts = load_prompts(task)
            for c in s.concurrency:
                order = arms if cell_index % 2 == 0 else tuple(reversed(arms))
                cell_index += 1
                for arm in order:
                    bar.set_postfix_str(f"{arm} {task} c={c}")
                    settle()  # the other arm's engine stops spinning on a shared CPU core
                    cell = measure(endpoints[arm], prompts, c, s, bar)
                    out[arm].setdefault(task, {})[str(c)] = cell
                    tau = f"{cell['tau']:.2f}" if cell["tau"] else "-"
                    rate, failed = cell["tokens_per_s"], cell["failed"]
                    logger.info("%s %s c=%d: %.1f tok/s, tau %s, %d failed", arm, task, c, rate, tau, failed)
    return out


# ----------------------------------------------------------------------------------------- report


def speedups(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """DFlash / AR tokens/s per task and concurrency, from both arms' cells."""
    ar, df = results.get("ar", {}), results.get("dflash", {})
    out: dict[str, dict[str, float | None]] = {}
    for task in df:
        out[task] = {}
        for c, cell in df[task].items():
            base = ar.get(task, {}).get(c, {}).get("tokens_per_s")
            out[task][c] = cell["tokens_per_s"] / base if base else None
    return out


def _cell(ar: float | None, df: float | None) -> str:
    if ar is None or df is None:
        return "–"
    ratio = f" ({df / ar:.1f}×)" if ar > 0 else ""
    return f"{ar:,.0f} → {df:,.0f}{ratio}"


def _tau(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "–"


def markdown_table(results: dict[str, Any]) -> str:
    """The reference table's shape, our figures first and the reference B300 figures beside them."""
    ar, df = results.get("ar", {}), results.get("dflash", {})
    concurrencies = sorted({int(c) for task in (ar | df).values() for c in task})
    tasks = [t for t in TASKS if t in ar or t in df]
    head = ["task", *[f"c={c}" for c in concurrencies], f"τ ({'/'.join(f'c{c}' for c in concurrencies)})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in tasks:
        ours, ref = [], []
        for c in concurrencies:
            a = ar.get(task, {}).get(str(c), {}).get("tokens_per_s")
            d = df.get(task, {}).get(str(c), {}).get("tokens_per_s")
            ours.append(_cell(a, d))
            r = REFERENCE.get(task, {}).get(c)
            ref.append(_cell(r[0], r[1]) if r else "–")
        taus = " / ".join(_tau(df.get(task, {}).get(str(c), {}).get("tau")) for c in concurrencies)
        ref_taus = " / ".join(_tau(REFERENCE.get(task, {}).get(c, (0, 0, None))[2]) for c in concurrencies)
        title = TASK_TITLES.get(task, task)
        lines.append(f"| {title} (ours) | " + " | ".join(ours) + f" | {taus} |")
        lines.append(f"| {title} (B300 reference) | " + " | ".join(ref) + f" | {ref_taus} |")
    return "\n".join(lines) + "\n"


def latency_table(results: dict[str, Any]) -> str:
    """TTFT and inter-chunk latency percentiles per arm, task and concurrency (milliseconds)."""
    lines = [
        "| arm | task | c | tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | TPOT | failed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(v: float | None) -> str:
        return f"{v * 1000:.1f}" if v is not None else "–"

    for arm in ARMS:
        for task, cells in results.get(arm, {}).items():
            for c, x in cells.items():
                lines.append(
                    f"| {arm} | {task} | {c} | {x['tokens_per_s']:.1f} | {ms(x['ttft_p50_s'])} | {ms(x['ttft_p99_s'])} "
                    f"| {ms(x['itl_p50_s'])} | {ms(x['itl_p99_s'])} | {ms(x['tpot_mean_s'])} | {x['failed']} |"
                )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Speedup per task and concurrency beside the reference's, and tau beside the reference's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = speedups(results)
    df = results.get("dflash", {})
    tasks = [t for t in TASKS if t in df]
    concurrencies = sorted({int(c) for t in tasks for c in df[t]})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    width = 0.8 / max(1, 2 * len(concurrencies))
    for i, c in enumerate(concurrencies):
        xs = [k + (2 * i) * width for k in range(len(tasks))]
        ours = [ratios.get(t, {}).get(str(c)) or 0 for t in tasks]
        ref = [REFERENCE[t][c][1] / REFERENCE[t][c][0] if c in REFERENCE.get(t, {}) else 0 for t in tasks]
        ax1.bar(xs, ours, width, label=f"ours c={c}")
        ax1.bar([x + width for x in xs], ref, width, label=f"B300 ref c={c}", alpha=0.45)
        taus = [df[t].get(str(c), {}).get("tau") or 0 for t in tasks]
        ref_taus = [REFERENCE[t][c][2] if c in REFERENCE.get(t, {}) else 0 for t in tasks]
        ax2.bar(xs, taus, width, label=f"ours c={c}")
        ax2.bar([x + width for x in xs], ref_taus, width, label=f"B300 ref c={c}", alpha=0.45)
    for ax, title in ((ax1, "DFlash / AR generated tokens/s"), (ax2, "acceptance length τ")):
        ax.set_xticks([k + width * (len(concurrencies) - 0.5) for k in range(len(tasks))])
        ax.set_xticklabels([TASK_TITLES.get(t, t) for t in tasks])
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax1.axhline(1.0, color="grey", linewidth=0.8)
    fig.suptitle(results.get("label", "dflash-serve"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    results["speedup"] = speedups(results)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(
        f"# DFlash table — {results.get('label', '')}\n\n"
        + markdown_table(results)
        + "\n## Latency (ms)\n\n"
        + latency_table(results)
    )
    if "dflash" in results:
        plot(results, out.with_suffix(".png"))


# ----------------------------------------------------------------------------------------- CLI


def _quick_app() -> Any:
    """local.yaml's demo pair plus its AR twin, in one app: both arms from one deployment."""
    from config import AppConfig

    base = AppConfig.from_yaml("serve_app/configs/local.yaml")
    dflash = base.models[0]
    ar = dflash.model_copy(update={"id": dflash.id + "-ar", "speculative": None})
    return base.model_copy(update={"name": "bench-quick", "models": [dflash, ar]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="DFlash endpoint, e.g. http://LB:8000 (no /v1)")
    parser.add_argument("--model", help="model id at --base-url")
    parser.add_argument("--ar-base-url", help="AR endpoint (default: --base-url)")
    parser.add_argument("--ar-model", help="AR model id (default: --model, i.e. the same app redeployed)")
    parser.add_argument("--api-key", default=None, help="Bearer key for both endpoints")
    parser.add_argument("--only", choices=ARMS, help="run one arm and merge it into --out")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--num-prompts", type=int, default=128, help="measured prompts per cell (reference: 128)")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--no-thinking", action="store_true", help="thinking off (the reference runs with it on)")
    parser.add_argument("--timeout-s", type=float, default=3600)
    parser.add_argument("--out", type=Path, default=RESULTS / "dflash_table")
    parser.add_argument("--label", default=None, help="hardware/setup line printed with the results")
    parser.add_argument("--quick", action="store_true", help="serve the tiny CPU demo pair and run a few prompts")
    parser.add_argument(
        "--local", action="store_true", help="serve make serve's demo pair and its AR twin here, with these settings"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tasks = tuple(t for t in args.tasks.split(",") if t)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        parser.error(f"unknown tasks {sorted(unknown)}; known: {', '.join(TASKS)}")
    settings = Settings(
        tasks=tasks,
        concurrency=tuple(int(c) for c in args.concurrency.split(",")),
        num_prompts=args.num_prompts,
        max_tokens=args.max_tokens,
        thinking=not args.no_thinking,
        timeout_s=args.timeout_s,
    )
    if args.quick:
        settings = QUICK
    if args.quick or args.local:
        _run_local(settings, args.out)
        return
    if not args.base_url or not args.model:
        parser.error("--base-url and --model are required (or --quick)")
    endpoints = {
        "dflash": Endpoint(args.base_url.rstrip("/"), args.model, args.api_key),
        "ar": Endpoint((args.ar_base_url or args.base_url).rstrip("/"), args.ar_model or args.model, args.api_key),
    }
    run_table(endpoints, settings, args.out, args.only, args.label or args.base_url)


def run_table(endpoints: dict[str, Endpoint], s: Settings, out: Path, only: str | None, label: str) -> dict[str, Any]:
    """Measure ``only`` arm (or both), merge into ``out``'s results, write the table, PNG and JSON."""
    path = out.with_suffix(".json")
    results: dict[str, Any] = json.loads(path.read_text()) if only and path.exists() else {}
    results["label"] = label
    results["settings"] = s.__dict__
    results |= run_arms(endpoints, (only,) if only else ARMS, s)
    write_outputs(results, out)
    print("\n" + markdown_table(results))
    print(f"wrote {path}, {out.with_suffix('.md')} and {out.with_suffix('.png')}")
    return results


def _run_local(s: Settings, out: Path) -> None:
    from tools.demo_pair import ensure_demo_pair
    from tools.ports import free_port
    from tools.serve import serving

    ensure_demo_pair()
    config = _quick_app()
    dflash, ar = config.models
    with serving(config, free_port()) as url:
        endpoints = {"dflash": Endpoint(url, dflash.id), "ar": Endpoint(url, ar.id)}
        label = f"tiny CPU demo pair (make serve's config) on {describe_machine()}"
        results = run_table(endpoints, s, out, None, label)
    problems = smoke_problems(results)
    if problems:
        raise SystemExit("bench-quick failed:\n  " + "\n  ".join(problems))


def smoke_problems(results: dict[str, Any]) -> list[str]:
    """What makes a quick run a failure: lost requests, no tokens, or a DFlash arm that never drafted."""
    problems = []
    for arm in ARMS:
        for task, cells in results.get(arm, {}).items():
            for c, cell in cells.items():
                where = f"{arm} {task} c={c}"
                if cell["failed"]:
                    problems.append(f"{where}: {cell['failed']} failed requests {cell['errors']}")
                if cell["output_tokens"] <= 0:
                    problems.append(f"{where}: no tokens generated")
                if arm == "dflash" and cell["tau"] is None:
                    problems.append(f"{where}: no drafts in /metrics (is the drafter on?)")
    return problems


if __name__ == "__main__":
    main()
