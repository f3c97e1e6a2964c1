"""Autoscaling benchmark: our SLO policy vs Serve's default on simulated B300 replicas that start in minutes.

    python -m sim.autoscaling [--quick] [--out DIR]        (make bench-autoscaling)

Two traces (a 10x burst between quiet periods, and a diurnal ramp), each run with every arm of
``sim/autoscaling/arms.py`` on the same requests. Prints SLO attainment (share of requests with
TTFT and time per output token within the production config's objective), replica-hours and requests
cut at downscale per arm, and our policy's ratios to the best-tuned default (the one with the highest
attainment, ties to the cheaper); writes ``autoscaling_sim.json`` and PNGs to ``docs/autoscaling/``
(``--quick``: ``bench/results/``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from serve_app.serve_options import graceful_shutdown_timeout_s, max_ongoing_requests
from sim.autoscaling.arms import Arm, arms, benchmark_model, slo_of
from sim.autoscaling.cluster import AutoscaledCluster, ClusterConfig, RunResult
from sim.autoscaling.traces import Trace, bursty, diurnal
from sim.production import production_app
from sim.results import results_dir
from sim.routing.metrics import percentile

GOAL_HOURS_RATIO = 0.8  # >= 20% fewer replica-hours than the best-tuned default ...
# ... at the same or better attainment; the simulator's requests are Poisson draws, so "the same" allows
# this much (a few hundred requests out of tens of thousands).
ATTAINMENT_TOLERANCE = 0.005


def summarize(result: RunResult, trace: Trace, ttft_s: float, tpot_s: float) -> dict[str, Any]:
    jobs = [j for j in result.jobs if math.isfinite(j.done_s)]
    ttfts = [j.first_token_s - j.arrival_s for j in jobs]
    tpots = [(j.done_s - j.first_token_s) / max(1, j.turn.output_tokens - 1) for j in jobs]
    ok = sum(1 for a, b in zip(ttfts, tpots, strict=True) if a <= ttft_s and b <= tpot_s)
    end = trace.duration_s
    hours = sum(max(0.0, min(r.gone_s or end, end) - r.asked_s) for r in result.replicas if r.asked_s < end) / 3600
    return {
        "requests": len(result.jobs),
        "slo_attainment": ok / len(result.jobs),
        "ttft_ok": sum(1 for a in ttfts if a <= ttft_s) / len(result.jobs),
        "tpot_ok": sum(1 for b in tpots if b <= tpot_s) / len(result.jobs),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p90_s": percentile(ttfts, 90),
        "tpot_p90_s": percentile(tpots, 90),
        "replica_hours": hours,
        "mean_replicas": hours * 3600 / end,
        "peak_replicas": max(t for _, t, _, _ in result.timeline),
        "scale_events": sum(1 for a, b in zip(result.timeline, result.timeline[1:], strict=False) if a[1] != b[1]),
        "dropped_at_downscale": result.dropped,
        "timeline": [(round(t), target, serving, round(rate, 3)) for t, target, serving, rate in result.timeline[::30]],
    }


def best_default(rows: dict[str, dict[str, Any]]) -> str:
    defaults = [name for name in rows if name != "slo"]
    return max(defaults, key=lambda n: (round(rows[n]["slo_attainment"], 3), -rows[n]["replica_hours"]))


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for trace_name, data in results["traces"].items():
        fig, ax = plt.subplots(figsize=(10, 4.5))
        for name, row in data["arms"].items():
            tl = row["timeline"]
            ax.step([p[0] / 60 for p in tl], [p[1] for p in tl], where="post", label=f"{name} (target)")
        ax.set_xlabel("minutes")
        ax.set_ylabel("replicas asked for")
        rate = ax.twinx()
        tl = next(iter(data["arms"].values()))["timeline"]
        rate.fill_between([p[0] / 60 for p in tl], [p[3] for p in tl], color="grey", alpha=0.15, label="offered req/s")
        rate.set_ylabel("offered requests/s (grey)")
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{trace_name}: {data['description']}")
        fig.tight_layout()
        path = out / f"autoscaling_{trace_name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, axes = plt.subplots(1, len(results["traces"]), figsize=(11, 4.5))
    for ax, (trace_name, data) in zip(axes, results["traces"].items(), strict=True):
        for name, row in data["arms"].items():
            ax.scatter(row["replica_hours"], 100 * row["slo_attainment"], s=60, marker="*" if name == "slo" else "o")
            ax.annotate(name, (row["replica_hours"], 100 * row["slo_attainment"]), fontsize=8)
        ax.set_xlabel("replica-hours (GPU-hours)")
        ax.set_ylabel("SLO attainment, % of requests")
        ax.set_title(trace_name)
    fig.suptitle("up and left is better")
    fig.tight_layout()
    path = out / "autoscaling_tradeoff.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter traces (a few minutes of CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: docs/autoscaling/ (--quick: bench/results/)")
    args = parser.parse_args()
    args.out = args.out or results_dir("autoscaling", args.quick)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the policy logs every decision there
    traces = (
        [bursty(quiet_s=600, burst_s=600), diurnal(period_s=3600)] if args.quick else [bursty(), diurnal(period_s=7200)]
    )
    model = benchmark_model()
    ttft_s, tpot_s = slo_of(model)
    request_timeout_s = production_app().ingress.request_timeout_s
    cluster = ClusterConfig(
        max_ongoing_requests=max_ongoing_requests(model),
        graceful_shutdown_s=graceful_shutdown_timeout_s(model, request_timeout_s),
        seed=args.seed,
    )
    plan: list[tuple[Trace, Arm]] = [(t, a) for t in traces for a in arms(model)]
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "slo": {"ttft_s": ttft_s, "tpot_s": tpot_s},
        "cluster": {
            "start_s_range": cluster.start_s_range,
            "max_ongoing_requests": cluster.max_ongoing_requests,
            "push_s": cluster.push_s,
            "look_back_s": cluster.look_back_s,
            "graceful_shutdown_s": cluster.graceful_shutdown_s,
            "max_replicas": model.replicas.max_replicas,
        },
        "arms": {a.name: a.description for a in arms(model)},
        "traces": {},
    }
    for trace, arm in tqdm(plan, desc="simulating", unit="run"):
        run = AutoscaledCluster(trace, arm.loop(), cluster).run()
        entry = results["traces"].setdefault(trace.name, {"description": trace.description, "arms": {}})
        entry["arms"][arm.name] = summarize(run, trace, ttft_s, tpot_s)
    print(f"SLO: TTFT <= {ttft_s:g} s and time per output token <= {tpot_s * 1000:g} ms, per request")
    for name, data in results["traces"].items():
        rows = data["arms"]
        print(f"\n{name}: {data['description']}")
        print(f"{'arm':<24} {'attain':>7} {'TTFT p90':>9} {'rep-h':>7} {'mean':>6} {'peak':>5} {'moves':>6} {'cut':>4}")
        for arm_name, r in rows.items():
            print(
                f"{arm_name:<24} {100 * r['slo_attainment']:6.1f}% {r['ttft_p90_s']:8.1f}s {r['replica_hours']:7.2f} "
                f"{r['mean_replicas']:6.2f} {r['peak_replicas']:5d} {r['scale_events']:6d} "
                f"{r['dropped_at_downscale']:4d}"
            )
        best = best_default(rows)
        ours, ref = rows["slo"], rows[best]
        ratio = ours["replica_hours"] / ref["replica_hours"]
        delta = ours["slo_attainment"] - ref["slo_attainment"]
        met = ratio <= GOAL_HOURS_RATIO and delta >= -ATTAINMENT_TOLERANCE
        data["comparison"] = {"best_default": best, "hours_ratio": ratio, "attainment_delta": delta, "goal_met": met}
        print(
            f"slo vs best-tuned default ({best}): replica-hours x{ratio:.2f} ({100 * (1 - ratio):+.0f}% saved), "
            f"attainment {100 * delta:+.1f} points -> goal (<= x{GOAL_HOURS_RATIO}, same attainment) "
            f"{'MET' if met else 'NOT met'}"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "autoscaling_sim.json"
    path.write_text(json.dumps(results, indent=1))
    for p in [path, *plot(results, args.out)]:
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
