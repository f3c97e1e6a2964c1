"""Where our serving path's CPU goes under load: py-spy flame graphs of each process we add (issue 17).

The app ``bench/overhead.py`` measures (the config's first model on one replica) serves a closed loop of
streamed chat requests at concurrency ``c`` (GSM8K prompts, ``ignore_eos``) while py-spy samples the
Serve proxy, the ingress and the engine replica's API side (the Ray actor that hosts vLLM's OpenAI layer
and ``AsyncLLM``; the engine core is vLLM's own loop and is left out). Each process gets an SVG flame
graph and, from a second (raw) recording of the same window, the share of its busy samples by the
package of the innermost frame: what a cut would have to remove. py-spy samples without pausing the
processes (``--nonblocking``) and without idle stacks, so a share is of the CPU a process spent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.datasets import load_prompts
from bench.load import run_closed_loop
from bench.machine import describe_machine
from bench.overhead import bodies, one_replica
from bench.process_cpu import ROLES, pids_by_role, snapshot
from tools.doc_markers import replace_between

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "results" / "flame"
DOC = REPO / "docs" / "benchmarks.md"
PROFILED = ("serve_proxy", "ingress", "engine_replica_api")
# Innermost frame's file -> package, first match wins; what is left is "other".
PACKAGES = (
    ("ours", re.compile(r"/(deployments|routing|contracts|config|autoscaling)/")),
    ("vllm", re.compile(r"/vllm/")),
    ("ray serve", re.compile(r"/ray/serve/")),
    ("ray core", re.compile(r"/ray/")),
    ("http (starlette, uvicorn, h11)", re.compile(r"/(starlette|uvicorn|h11|httptools|fastapi|anyio)/")),
    ("pydantic", re.compile(r"/pydantic(_core)?/")),
    ("serialization (json, pickle, msgpack)", re.compile(r"/(json|pickle|copyreg|msgpack|cloudpickle)")),
    ("asyncio", re.compile(r"/asyncio/")),
    ("grpc", re.compile(r"/grpc/")),
    ("logging", re.compile(r"/logging/")),
    ("prometheus / opentelemetry", re.compile(r"/(prometheus_client|opentelemetry)/")),
)
_FRAME_FILE = re.compile(r"\(([^():]+):\d+\)$")


def package_of(frame: str) -> str:
    """The package a py-spy frame (``func (path/file.py:line)``) belongs to, by its file's path."""
    m = _FRAME_FILE.search(frame)
    path = "/" + m.group(1) if m else ""
    for name, pattern in PACKAGES:
        if pattern.search(path):
            return name
    return "other"


def self_shares(raw: str) -> tuple[int, dict[str, float]]:
    """Busy samples and each package's share of them, from py-spy's raw (collapsed stacks) output."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        counts[package_of(stack.rsplit(";", 1)[-1])] += int(n)
    total = sum(counts.values())
    return total, {k: round(v / total, 4) for k, v in counts.most_common()} if total else {}


def _record(pid: int, seconds: int, path: Path, fmt: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--nonblocking",
            "-r",
            "50",
            "-d",
            str(seconds),
            "-p",
            str(pid),
            "-f",
            fmt,
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def cpu_ms_per_s(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """CPU milliseconds per wall second of each role between two snapshots (1000 is one core, busy)."""
    return {
        role: round((after[role] - before[role]) * 1000 / seconds, 1) for role in ROLES if after[role] > before[role]
    }


def idle_cpu(seconds: float) -> dict[str, float]:
    """What each role of our stack spends with no request at all: Ray's control loops, health checks, metrics."""
    before = snapshot({"ours": os.getpid()})["ours"]
    time.sleep(seconds)
    return cpu_ms_per_s(before, snapshot({"ours": os.getpid()})["ours"], seconds)


def profile(url: str, model: str, concurrency: int, seconds: int, max_tokens: int) -> dict[str, Any]:
    """Load ``url`` at ``concurrency`` for about ``seconds`` while py-spy records each profiled process."""
    prompts = load_prompts("gsm8k")
    warm = bodies(prompts[:concurrency], model, max_tokens)
    asyncio.run(run_closed_loop(url, warm, concurrency))
    idle = idle_cpu(seconds / 2)  # before py-spy attaches: its own sampling is not idle work
    roles = pids_by_role(os.getpid())
    missing = [r for r in PROFILED if r not in roles]
    if missing:
        raise RuntimeError(f"no process found for {missing}")
    OUT.mkdir(parents=True, exist_ok=True)
    recorders: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    for role in PROFILED:
        pid = roles[role][0]
        raw = OUT / f"{role}.raw.txt"
        recorders.append((role, raw, _record(pid, seconds, raw, "raw")))
        recorders.append((role, OUT / f"{role}.svg", _record(pid, seconds, OUT / f"{role}.svg", "flamegraph")))
    load = bodies(prompts * 4, model, max_tokens)  # more than the window needs; cut off below
    started = time.monotonic()
    before = snapshot({"ours": os.getpid()})["ours"]

    async def until_recorded() -> Any:
        task = asyncio.create_task(run_closed_loop(url, load, concurrency))
        while any(p.poll() is None for _, _, p in recorders):
            await asyncio.sleep(0.5)
        task.cancel()
        return time.monotonic() - started

    wall = asyncio.run(until_recorded())
    loaded = cpu_ms_per_s(before, snapshot({"ours": os.getpid()})["ours"], wall)
    out: dict[str, Any] = {
        "concurrency": concurrency,
        "seconds": round(wall, 1),
        "cpu_ms_per_s": {"idle": idle, "loaded": loaded},
        "processes": {},
    }
    for role, path, proc in recorders:
        if proc.returncode != 0 or not path.exists():
            raise RuntimeError(f"py-spy failed on {role} ({proc.returncode})")
        if path.suffix == ".txt":
            samples, shares = self_shares(path.read_text())
            out["processes"][role] = {"busy_samples": samples, "self_share_by_package": shares}
            path.unlink()  # the SVG is what people look at; the shares are kept in the JSON
    return out


def markdown(results: dict[str, Any]) -> str:
    """One row per package, one column per profiled process: its share of that process's busy samples."""
    procs = results["processes"]
    packages = sorted(
        {p for x in procs.values() for p in x["self_share_by_package"]},
        key=lambda p: -sum(x["self_share_by_package"].get(p, 0) for x in procs.values()),
    )
    cpu = results["cpu_ms_per_s"]
    lines = [
        f"Source: `docs/results/flame.json`, SVGs in `docs/results/flame/` ({results['label']}).",
        "",
        "CPU milliseconds per second by process role (1,000 = one core busy), idle and under the load:",
        "",
        "| | " + " | ".join(r for r in ROLES if r in cpu["loaded"] or r in cpu["idle"]) + " |",
        "|---|" + "---:|" * sum(1 for r in ROLES if r in cpu["loaded"] or r in cpu["idle"]),
    ]
    for state in ("idle", "loaded"):
        cells = [str(cpu[state].get(r, 0.0)) for r in ROLES if r in cpu["loaded"] or r in cpu["idle"]]
        lines.append(f"| {state} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Share of each profiled process's busy samples by the package of the innermost frame:",
        "",
        "| innermost frame in | " + " | ".join(procs) + " |",
        "|---|" + "---:|" * len(procs),
    ]
    for pkg in packages:
        cells = [f"{x['self_share_by_package'].get(pkg, 0) * 100:.1f}%" for x in procs.values()]
        lines.append(f"| {pkg} | " + " | ".join(cells) + " |")
    lines.append("| busy samples (50 Hz) | " + " | ".join(str(x["busy_samples"]) for x in procs.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="serve_app/configs/local.yaml", help="AppConfig; its first model is used")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=60, help="py-spy's recording window")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--report-only", action="store_true", help="rewrite the docs table from the JSON")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result_file = OUT.with_suffix(".json")
    if not args.report_only:
        from tools.ports import free_port
        from tools.serve import serving

        config = one_replica(args.config, "bench-flame")
        model = config.models[0]
        with serving(config, free_port()) as base:
            results = profile(base + "/v1/chat/completions", model.id, args.concurrency, args.seconds, args.max_tokens)
        results["label"] = (
            f"{model.id}, speculative={model.speculative is not None}, c={args.concurrency}, "
            f"max_tokens={args.max_tokens}, {describe_machine()}"
        )
        result_file.write_text(json.dumps(results, indent=2) + "\n")
    results = json.loads(result_file.read_text())
    replace_between(DOC, "<!-- flame:begin -->", "<!-- flame:end -->", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
