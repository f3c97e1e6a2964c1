"""Results as a plain-text table, the issue's goals with measured values, and PNG plots.

``results`` is the JSON the CLI writes: ``experiments[name]`` is a list of points
``{"x", "replicas", "load", "policies": {policy: RunMetrics.to_json()}}``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SATURATED = 0.95  # round robin delivers less than this share of the offered output: the cluster is saturated
BASELINES = ("ray_prefix", "sglang_cache_aware")
X_LABELS = {"load": "load", "working_set": "working set / cluster KV", "multi_turn": "load", "no_shared_prefix": "load"}


def table(results: dict[str, Any]) -> str:
    lines = []
    header = f"{'policy':<20}{'hit':>7}{'pooled':>8}{'ttft p50':>10}{'p90':>9}{'p99':>9}{'out tok/s':>11}{'max/min':>9}"
    for name, pts in results["experiments"].items():
        for p in pts:
            lines.append(f"\n{name}: {X_LABELS[name]} {p['x']}, {p['replicas']} replicas, load {p['load']}")
            lines.append(header)
            for policy, m in p["policies"].items():
                lines.append(
                    f"{policy:<20}{m['hit_rate']:>7.3f}{m['pooled_hit_rate']:>8.3f}{m['ttft_p50_s'] * 1e3:>8.0f}ms"
                    f"{m['ttft_p90_s'] * 1e3:>7.0f}ms{m['ttft_p99_s'] * 1e3:>7.0f}ms{m['throughput_tps']:>11.0f}"
                    f"{m['load_ratio']:>9.2f}"
                )
    cost = results.get("routing_cost")
    if cost:
        lines.append(
            f"\nrouting cost, prefix policy: {cost['prompt_tokens']}-token prompt, {cost['replicas']} replicas, "
            f"index {cost['index_entries']} entries (bound {cost['index_entry_bound']}, "
            f"~{cost['index_rss_mib']:.0f} MiB)"
        )
        lines.append(
            f"{'scenario':<24}{'hash p50':>10}{'p99':>8}{'choose p50':>12}{'p99':>8}{'total p50':>11}{'p99':>8}"
        )
        for s in cost["scenarios"]:
            lines.append(
                f"{s['scenario']:<24}{s['hash_p50_ms']:>8.2f}ms{s['hash_p99_ms']:>6.2f}ms{s['choose_p50_ms']:>10.2f}ms"
                f"{s['choose_p99_ms']:>6.2f}ms{s['total_p50_ms']:>9.2f}ms{s['total_p99_ms']:>6.2f}ms"
            )
    return "\n".join(lines)


def saturation_point(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest load at which round robin is saturated (the highest load if it never is)."""
    for p in points:
        rr = p["policies"]["round_robin"]
        if rr["throughput_tps"] < SATURATED * rr["offered_tps"]:
            return p
    return points[-1]


def goals(results: dict[str, Any], policy: str = "prefix") -> list[dict[str, Any]]:
    """The issue's goals, each with the measured value, the target and whether it is met."""
    out: list[dict[str, Any]] = []

    def add(goal: str, value: float, target: str, met: bool) -> None:
        out.append({"goal": goal, "value": round(value, 4), "target": target, "met": met})

    for experiment in ("load", "multi_turn"):
        pts = results["experiments"].get(experiment)
        if not pts:
            continue
        point = saturation_point(pts)
        sat, where = point["policies"], f"{experiment} @{point['x']}"
        ours = sat[policy]
        ratio = ours["hit_rate"] / max(ours["pooled_hit_rate"], 1e-9)
        add(f"{where}: hit rate / pooled bound", ratio, ">= 0.90", ratio >= 0.9)
        ttft = ours["ttft_p90_s"] / sat["round_robin"]["ttft_p90_s"]
        add(f"{where}: TTFT p90 / round robin's", ttft, "<= 0.50", ttft <= 0.5)
        for base in BASELINES:
            gap = ours["hit_rate"] - sat[base]["hit_rate"]
            add(f"{where}: hit rate - {base}'s", gap, "> 0", gap > 0)
            rel = ours["ttft_p90_s"] / sat[base]["ttft_p90_s"]
            add(f"{where}: TTFT p90 / {base}'s", rel, "< 1", rel < 1)
    flat_points = results["experiments"].get("no_shared_prefix")
    if flat_points:
        point = saturation_point(flat_points)
        flat, where = point["policies"], f"no_shared_prefix @{point['x']}"
        rel = flat[policy]["ttft_p90_s"] / flat["pow2"]["ttft_p90_s"]
        add(f"{where}: TTFT p90 / pow2's", rel, "<= 1.05", rel <= 1.05)
        add(f"{where}: replica load max/min", flat[policy]["load_ratio"], "<= 1.3", flat[policy]["load_ratio"] <= 1.3)
    cost = results.get("routing_cost")
    if cost:
        typical = next(s for s in cost["scenarios"] if s["scenario"] == "shared_system_prompt")
        p99 = typical["total_p99_ms"]
        add("routing cost p99, 8k prompt, 64 replicas (ms)", p99, "<= 1", p99 <= 1)
        bound = cost["index_entries"] / cost["index_entry_bound"]
        add("index entries / configured bound", bound, "<= 1", bound <= 1)
    return out


def goals_table(rows: list[dict[str, Any]]) -> str:
    width = max((len(r["goal"]) for r in rows), default=10) + 2
    lines = [f"{'goal':<{width}}{'measured':>10}  {'target':<9}met"]
    lines += [f"{r['goal']:<{width}}{r['value']:>10.3f}  {r['target']:<9}{'yes' if r['met'] else 'NO'}" for r in rows]
    return "\n".join(lines)


def plots(results: dict[str, Any], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    specs = (
        ("working_set", "hit_rate", "prefix-cache hit rate (tokens)", "hit_rate_vs_working_set.png", False),
        ("load", "ttft_p90_s", "TTFT p90 (s)", "ttft_p90_vs_load.png", True),
        ("load", "load_ratio", "replica load max/min (time-averaged in flight)", "load_ratio_vs_load.png", False),
    )
    for experiment, metric, ylabel, filename, log in specs:
        pts = results["experiments"].get(experiment)
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        xs = [p["x"] for p in pts]
        for policy in pts[0]["policies"]:
            ax.plot(xs, [p["policies"][policy][metric] for p in pts], marker="o", label=policy)
        if metric == "hit_rate":
            ax.plot(xs, [p["policies"]["prefix"]["pooled_hit_rate"] for p in pts], "k--", label="pooled-cache bound")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel(X_LABELS[experiment])
        ax.set_ylabel(ylabel)
        ax.set_title(f"{experiment} sweep, {pts[0]['replicas']} replicas")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
