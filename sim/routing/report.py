"""Results as a plain-text table, the issue's goals with measured values, and PNG plots.

``results`` is the JSON the CLI writes. ``seeds[seed]["experiments"][name]`` is one seed's list of points
``{"x", "replicas", "load", "policies": {policy: RunMetrics.to_json()}}``; the top-level ``experiments``
has the same shape and holds the mean over the held-out seeds (``mean_experiments``), and ``goals`` each
goal's mean and 95% interval over them (``goals_over_seeds``).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from sim.intervals import interval

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
        lines.append("\nrouting cost: " + cost_markdown(cost))
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


def mean_experiments(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Each point's metrics averaged over seeds (the points line up: same sweep, other requests)."""
    out: dict[str, Any] = {}
    for name, first in per_seed[0].items():
        out[name] = []
        for i, point in enumerate(first):
            runs = [seed[name][i] for seed in per_seed]
            policies = {}
            for policy, metrics in point["policies"].items():
                values = [r["policies"][policy] for r in runs]
                policies[policy] = {k: _mean_metric([v[k] for v in values]) for k in metrics}
            out[name].append(point | {"requests": statistics.fmean(r["requests"] for r in runs), "policies": policies})
    return out


def _mean_metric(values: list[Any]) -> Any:
    if isinstance(values[0], dict):  # admission reasons: counts, summed
        keys = {k for v in values for k in v}
        return {k: sum(v.get(k, 0) for v in values) for k in sorted(keys)}
    if any(v is None for v in values):  # an infinite load ratio on any seed
        return None
    return statistics.fmean(values)


TUNED_ON = ("load", "hot_prefixes", "multi_turn")  # the experiments a baseline's grid point is picked on


def tune(experiments: dict[str, Any], families: dict[str, str]) -> dict[str, str]:
    """Each baseline family's best grid point on one (the tuning) seed: the lowest geometric mean of TTFT p90
    over the saturation points of ``TUNED_ON`` (hit rates tie at the reference there; latency is what the
    knobs move). Families of one member map to it."""
    out: dict[str, str] = {}
    for family in dict.fromkeys(families.values()):
        members = [name for name, f in families.items() if f == family]
        points = [saturation_point(e, experiments[e])["policies"] for e in TUNED_ON if e in experiments]

        def score(name: str, points: list[dict[str, Any]] = points) -> float:
            return statistics.fmean(math.log(p[name]["ttft_p90_s"]) for p in points) if points else 0.0

        out[family] = min(members, key=lambda n: (score(n), members.index(n)))
    return out


def compared(tuned: dict[str, str]) -> tuple[str, ...]:
    """The baselines the goals compare against: each at its shipped default, and its tuned point if another."""
    return tuple(dict.fromkeys([*BASELINES, *(tuned[b] for b in BASELINES if b in tuned)]))


def goals(
    experiments: dict[str, Any], routing_cost: dict[str, Any] | None, baselines: tuple[str, ...] = BASELINES
) -> list[dict[str, Any]]:
    """The issue's goals on one seed: per goal the target and, for each of our policies, value and verdict."""
    per_policy = {p: _goals_for(experiments, routing_cost, p, baselines) for p in OURS}
    return [
        {
            "goal": goal,
            "target": target,
            "values": {p: per_policy[p][i][2] for p in OURS},
            "met": {p: per_policy[p][i][3] for p in OURS},
        }
        for i, (goal, target, _, _) in enumerate(per_policy[OURS[0]])
    ]


def goals_over_seeds(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each goal's value as mean and 95% interval over seeds; met when every seed met it."""
    out = []
    for rows in zip(*per_seed, strict=True):
        values = {p: interval([r["values"][p] for r in rows]) for p in OURS}
        out.append(
            {
                "goal": rows[0]["goal"],
                "target": rows[0]["target"],
                "values": {p: v.mean for p, v in values.items()},
                "intervals": {p: v.to_json() for p, v in values.items()},
                "met": {p: all(r["met"][p] for r in rows) for p in OURS},
                "met_on_seeds": {p: sum(r["met"][p] for r in rows) for p in OURS},
            }
        )
    return out


def _goals_for(
    experiments: dict[str, Any], cost: dict[str, Any] | None, policy: str, baselines: tuple[str, ...]
) -> list[tuple[str, str, float, bool]]:
    out: list[tuple[str, str, float, bool]] = []
    for experiment in ("load", "hot_prefixes", "multi_turn"):
        pts = experiments.get(experiment)
        if not pts:
            continue
        point = saturation_point(experiment, pts)
        sat, where = point["policies"], f"{experiment} @{point['x']}"
        ours = sat[policy]
        ratio = ours["hit_rate"] / max(ours["pooled_hit_rate"], 1e-9)
        out.append((f"{where}: hit rate / pooled reference", ">= 0.90", ratio, ratio >= 0.9))
        ttft = ours["ttft_p90_s"] / sat["round_robin"]["ttft_p90_s"]
        out.append((f"{where}: TTFT p90 / round robin's", "<= 0.50", ttft, ttft <= 0.5))
        for base in baselines:
            gap = ours["hit_rate"] - sat[base]["hit_rate"]
            out.append((f"{where}: hit rate - {base}'s", "> 0", gap, gap > 0))
            rel = ours["ttft_p90_s"] / sat[base]["ttft_p90_s"]
            out.append((f"{where}: TTFT p90 / {base}'s", "< 1", rel, rel < 1))
    flat_points = experiments.get("no_shared_prefix")
    if flat_points:
        point = saturation_point("no_shared_prefix", flat_points)
        flat, where = point["policies"], f"no_shared_prefix @{point['x']}"
        rel = flat[policy]["ttft_p90_s"] / flat["pow2"]["ttft_p90_s"]
        out.append((f"{where}: TTFT p90 / pow2's", "<= 1.05", rel, rel <= 1.05))
        spread = math.inf if flat[policy]["load_ratio"] is None else flat[policy]["load_ratio"]
        out.append((f"{where}: replica load max/min", "<= 1.3", spread, spread <= 1.3))
    if cost:
        typical = next(s for s in cost[policy]["scenarios"] if s["scenario"] == "shared_system_prompt")
        p99 = typical["total_p99_ms"]
        out.append(("routing cost p99 (ms), 8k prompt, 64 replicas", "<= 1", p99, p99 <= 1))
        bound = cost[policy]["index_entries"] / cost[policy]["index_entry_bound"]
        out.append(("index entries / configured bound", "<= 1", bound, bound <= 1))
    return out


def goals_table(rows: list[dict[str, Any]]) -> str:
    width = max((len(r["goal"]) for r in rows), default=10) + 2
    lines = [f"{'goal':<{width}}{'target':<9}" + "".join(f"{p + ' (95% interval)':>34}" for p in OURS)]
    for r in rows:
        cells = ""
        for p in OURS:
            iv = r.get("intervals", {}).get(p)
            span = f" [{iv['lo']:.3f}, {iv['hi']:.3f}]" if iv and iv["n"] > 1 else ""
            cells += f"{r['values'][p]:>12.3f}{span:>17} {'ok' if r['met'][p] else 'MISS':>4}"
        lines.append(f"{r['goal']:<{width}}{r['target']:<9}{cells}")
    return "\n".join(lines)


def goals_markdown(rows: list[dict[str, Any]]) -> str:
    """The goals as the docs show them: held-out mean, 95% interval, and on how many seeds each was met."""
    lines = ["| goal | target | `prefix` | 95% interval | met on held-out seeds |", "|---|---|---:|---|---|"]
    for r in rows:
        iv = r.get("intervals", {}).get("prefix")
        span = f"[{iv['lo']:.3f}, {iv['hi']:.3f}]" if iv and iv["hi"] > iv["lo"] else "measured once"
        seeds = r.get("met_on_seeds", {}).get("prefix", int(r["met"]["prefix"]))
        n = iv["n"] if iv else 1
        lines.append(f"| {r['goal']} | {r['target']} | {r['values']['prefix']:.3f} | {span} | {seeds} of {n} |")
    return "\n".join(lines) + "\n"


SATURATION_ROWS = (  # (experiment, metric, label, scale): the docs' table of each policy at saturation
    ("load", "hit_rate", "shared prefix: hit rate", 1.0),
    ("load", "ttft_p90_s", "shared prefix: TTFT p90 (ms)", 1e3),
    ("hot_prefixes", "hit_rate", "hot prefixes (Zipf 1.0): hit rate", 1.0),
    ("hot_prefixes", "ttft_p90_s", "hot prefixes: TTFT p90 (ms)", 1e3),
    ("multi_turn", "hit_rate", "chats: hit rate", 1.0),
    ("multi_turn", "ttft_p90_s", "chats: TTFT p90 (ms)", 1e3),
    ("no_shared_prefix", "ttft_p90_s", "no shared prefix: TTFT p90 (ms)", 1e3),
    ("no_shared_prefix", "load_ratio", "no shared prefix: replica load max/min", 1.0),
)


def saturation_markdown(results: dict[str, Any], held_out: list[str], policies: list[str] | None = None) -> str:
    """Each policy at each experiment's saturation point: held-out mean and 95% interval (docs table)."""
    per_seed = [results["seeds"][s]["experiments"] for s in held_out]
    policies = policies or list(next(iter(per_seed[0].values()))[0]["policies"])
    lines = [
        "| experiment, point | pooled reference | " + " | ".join(f"`{p}`" for p in policies) + " |",
        "|---|---:|" + "---:|" * len(policies),
    ]
    for experiment, metric, label, scale in SATURATION_ROWS:
        if experiment not in per_seed[0]:
            continue
        # The saturation point of the held-out mean, then that point's value on each seed.
        index = results["experiments"][experiment].index(
            saturation_point(experiment, results["experiments"][experiment])
        )
        points = [seed[experiment][index] for seed in per_seed]
        pooled = (
            interval([p["policies"]["prefix"]["pooled_hit_rate"] for p in points]) if metric == "hit_rate" else None
        )
        cells = [_cell([p["policies"][policy][metric] for p in points], scale) for policy in policies]
        x = results["experiments"][experiment][index]["x"]
        lines.append(f"| {label} @ {x} | {_cell([pooled.mean], 1.0) if pooled else ''} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_markdown(cost: dict[str, Any]) -> str:
    """What routing one prompt costs the router in CPU time (``results["routing_cost"]``): the docs' cost table."""
    lines = [
        f"{cost['prompt_tokens']:,}-token prompt, {cost['replicas']} replicas, index filled to "
        f"{cost['index_capacity_blocks_per_replica']:,} blocks per replica (CPU time):\n",
        "| scenario | hash p50 / p99 | `choose` p50 / p99 | total p50 / p99 |",
        "|---|---:|---:|---:|",
    ]
    for policy in OURS:
        for sc in cost[policy]["scenarios"]:
            lines.append(
                f"| {sc['scenario'].replace('_', ' ')} | {sc['hash_p50_ms']:.2f} / {sc['hash_p99_ms']:.2f} ms | "
                f"{sc['choose_p50_ms']:.2f} / {sc['choose_p99_ms']:.2f} ms | "
                f"{sc['total_p50_ms']:.2f} / {sc['total_p99_ms']:.2f} ms |"
            )
    return "\n".join(lines) + "\n"


def calibration_markdown(parameters: dict[str, Any]) -> str:
    """The engine model against each seed cell (``parameters["calibration"]``): the docs' fit table."""
    cells = parameters["calibration"]
    concurrencies = sorted({c["concurrency"] for c in cells})
    lines = [
        "| task | " + " | ".join(f"c={c}: DFlash tok/s seed → model (error)" for c in concurrencies) + " |",
        "|---|" + "---:|" * len(concurrencies),
    ]
    for task in dict.fromkeys(c["task"] for c in cells):
        row = {c["concurrency"]: c for c in cells if c["task"] == task}
        lines.append(
            f"| {task} | "
            + " | ".join(
                f"{row[c]['dflash_tps']:,.0f} → {row[c]['dflash_model_tps']:,.0f} ({row[c]['dflash_error']:+.1%})"
                for c in concurrencies
            )
            + " |"
        )
    errors = [abs(c["dflash_error"]) for c in cells]
    ar_errors = [abs(c["ar_error"]) for c in cells]
    lines.append(
        f"\nDFlash: mean |error| {statistics.fmean(errors):.1%}, max {max(errors):.1%}; "
        f"AR (one curve for every task): mean |error| {statistics.fmean(ar_errors):.1%}, max {max(ar_errors):.1%}."
    )
    return "\n".join(lines) + "\n"


def _cell(values: list[float | None], scale: float) -> str:
    if any(v is None for v in values):
        return "inf"
    iv = interval([v * scale for v in values if v is not None])
    digits = 3 if scale == 1.0 else 0
    span = f" ± {(iv.hi - iv.lo) / 2:.{digits}f}" if iv.n > 1 else ""
    return f"{iv.mean:.{digits}f}{span}"


def plots(results: dict[str, Any], out_dir: Path, policies: list[str] | None = None) -> list[Path]:
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
        for policy in policies or pts[0]["policies"]:
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
