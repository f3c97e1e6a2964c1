"""Results as a plain-text table, the issue's goals with measured values, and PNG plots.

``results`` is the JSON the CLI writes: ``experiments[name]`` is a list of points
``{"x", "replicas", "load", "policies": {policy: RunMetrics.to_json()}}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

SATURATED = 0.95  # round robin delivers less than this share of the offered output: the cluster is saturated
CLOSED_LOOP = {"multi_turn"}  # a turn waits for the previous one, so delivered < offered says nothing there
BASELINES = ("ray_prefix", "sglang_cache_aware")
OURS = ("prefix",)
X_LABELS = {
    "load": "load",
    "working_set": "working set / cluster KV",
    "hot_prefixes": "load",
    "multi_turn": "load",
    "no_shared_prefix": "load",
}


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
                    f"{_ratio(m['load_ratio']):>9}"
                )
    cost = results.get("routing_cost")
    if cost:
        lines.append(
            f"\nrouting cost: {cost['prompt_tokens']}-token prompt, {cost['replicas']} replicas, "
            f"index bound {cost['index_capacity_blocks_per_replica']} blocks per replica"
        )
        lines.append(
            f"{'policy / scenario (CPU ms)':<40}{'hash p50':>10}{'p99':>8}{'choose p50':>12}{'p99':>8}"
            f"{'total p50':>11}{'p99':>8}{'wall p99':>10}"
        )
        for policy in OURS:
            for s in cost[policy]["scenarios"]:
                lines.append(
                    f"{policy + ' / ' + s['scenario']:<40}{s['hash_p50_ms']:>8.2f}ms{s['hash_p99_ms']:>6.2f}ms"
                    f"{s['choose_p50_ms']:>10.2f}ms{s['choose_p99_ms']:>6.2f}ms{s['total_p50_ms']:>9.2f}ms"
                    f"{s['total_p99_ms']:>6.2f}ms{s['wall_p99_ms']:>8.2f}ms"
                )
    return "\n".join(lines)


def _ratio(value: float | None) -> str:
    return "inf" if value is None else f"{value:.2f}"


def saturation_point(experiment: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """The lowest load at which round robin is saturated (the highest load if it never is, or if closed loop)."""
    if experiment not in CLOSED_LOOP:
        for p in points:
            rr = p["policies"]["round_robin"]
            if rr["throughput_tps"] < SATURATED * rr["offered_tps"]:
                return p
    return points[-1]


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals: per goal the target and, for each of our policies, the measured value and verdict."""
    per_policy = {p: _goals_for(results, p) for p in OURS}
    return [
        {
            "goal": goal,
            "target": target,
            "values": {p: per_policy[p][i][2] for p in OURS},
            "met": {p: per_policy[p][i][3] for p in OURS},
        }
        for i, (goal, target, _, _) in enumerate(per_policy[OURS[0]])
    ]


def _goals_for(results: dict[str, Any], policy: str) -> list[tuple[str, str, float, bool]]:
    out: list[tuple[str, str, float, bool]] = []
    for experiment in ("load", "hot_prefixes", "multi_turn"):
        pts = results["experiments"].get(experiment)
        if not pts:
            continue
        point = saturation_point(experiment, pts)
        sat, where = point["policies"], f"{experiment} @{point['x']}"
        ours = sat[policy]
        ratio = ours["hit_rate"] / max(ours["pooled_hit_rate"], 1e-9)
        out.append((f"{where}: hit rate / pooled reference", ">= 0.90", ratio, ratio >= 0.9))
        ttft = ours["ttft_p90_s"] / sat["round_robin"]["ttft_p90_s"]
        out.append((f"{where}: TTFT p90 / round robin's", "<= 0.50", ttft, ttft <= 0.5))
        for base in BASELINES:
            gap = ours["hit_rate"] - sat[base]["hit_rate"]
            out.append((f"{where}: hit rate - {base}'s", "> 0", gap, gap > 0))
            rel = ours["ttft_p90_s"] / sat[base]["ttft_p90_s"]
            out.append((f"{where}: TTFT p90 / {base}'s", "< 1", rel, rel < 1))
    flat_points = results["experiments"].get("no_shared_prefix")
    if flat_points:
        point = saturation_point("no_shared_prefix", flat_points)
        flat, where = point["policies"], f"no_shared_prefix @{point['x']}"
        rel = flat[policy]["ttft_p90_s"] / flat["pow2"]["ttft_p90_s"]
        out.append((f"{where}: TTFT p90 / pow2's", "<= 1.05", rel, rel <= 1.05))
        spread = math.inf if flat[policy]["load_ratio"] is None else flat[policy]["load_ratio"]
        out.append((f"{where}: replica load max/min", "<= 1.3", spread, spread <= 1.3))
    cost = results.get("routing_cost")
    if cost:
        typical = next(s for s in cost[policy]["scenarios"] if s["scenario"] == "shared_system_prompt")
        p99 = typical["total_p99_ms"]
        out.append(("routing cost p99 (ms), 8k prompt, 64 replicas", "<= 1", p99, p99 <= 1))
        bound = cost[policy]["index_entries"] / cost[policy]["index_entry_bound"]
        out.append(("index entries / configured bound", "<= 1", bound, bound <= 1))
    return out


def goals_table(rows: list[dict[str, Any]]) -> str:
    width = max((len(r["goal"]) for r in rows), default=10) + 2
    lines = [f"{'goal':<{width}}{'target':<9}" + "".join(f"{p:>22}" for p in OURS)]
    for r in rows:
        cells = "".join(f"{r['values'][p]:>17.3f} {'ok' if r['met'][p] else 'MISS':>4}" for p in OURS)
        lines.append(f"{r['goal']:<{width}}{r['target']:<9}{cells}")
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
            ys = [p["policies"][policy][metric] for p in pts]
            ax.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=policy)
        if metric == "hit_rate":
            pooled = [p["policies"]["prefix"]["pooled_hit_rate"] for p in pts]
            ax.plot(xs, pooled, "k--", label="pooled-cache reference")
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
