"""Simulated routing benchmark: every policy on the same simulated cluster and requests, side by side.

    python -m sim.routing [--quick] [--only EXPERIMENT,...] [--prefix NAME=VALUE ...] [--out DIR]

Experiments: load, working_set, hot_prefixes, multi_turn, no_shared_prefix, routing_cost (default: all).
``--prefix`` overrides a field of the production config's prefix policy (``routing.prefix`` in
gemma4-dflash-b300.yaml) for ``prefix`` and ``prefix_approx`` (e.g. imbalance_abs=8, the old default).

Prints a table per experiment point and the issue's goals, writes ``routing_sim.json`` and PNG plots to
``docs/routing-simulator/`` (64 replicas, several minutes) or, with ``--quick`` (16 replicas, about a
minute), to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from routing.policies import PrefixPolicyConfig
from sim.production import production_model
from sim.results import results_dir
from sim.routing import report, routing_cost, sweep
from sim.routing.engine import EngineModel
from sim.routing.workloads import Workload

logger = logging.getLogger(__name__)

EXPERIMENTS = ("load", "working_set", "hot_prefixes", "multi_turn", "no_shared_prefix", "routing_cost")


def _prefix_config(pairs: list[str]) -> PrefixPolicyConfig:
    """The production config's prefix policy, with ``NAME=VALUE`` overrides."""
    fields = {f.name: f.type for f in dataclasses.fields(PrefixPolicyConfig)}
    values: dict[str, float | int] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--prefix {pair!r}: expected NAME=VALUE with NAME one of {sorted(fields)}")
        values[key] = int(raw) if fields[key] in (int, "int") else float(raw)
    return dataclasses.replace(production_model().routing.prefix, **values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 replicas and fewer requests (about a minute)")
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated experiments to run")
    parser.add_argument("--prefix", action="append", default=[], metavar="NAME=VALUE", help="PrefixPolicyConfig field")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other experiments of an existing routing_sim.json with the same parameters (run them apart)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="default: docs/routing-simulator/ (--quick: bench/results/)")
    args = parser.parse_args()
    args.out = args.out or results_dir("routing-simulator", args.quick)
    logging.basicConfig(level=logging.WARNING)
    only = set(args.only.split(","))
    if unknown := only - set(EXPERIMENTS):
        raise SystemExit(f"--only: unknown experiments {sorted(unknown)}; choose from {EXPERIMENTS}")
    scale = sweep.QUICK if args.quick else sweep.FULL
    engine = EngineModel()
    prefix_config = _prefix_config(args.prefix)
    path = args.out / "routing_sim.json"
    results = _start(path, sweep.describe(scale, engine, prefix_config, args.seed), args.merge)

    started = time.perf_counter()
    _simulate(results, scale, engine, prefix_config, args.seed, only)
    if "routing_cost" in only:
        from tqdm import tqdm

        with tqdm(total=1, desc="routing cost", unit="bench") as bar:
            results["routing_cost"] = routing_cost.measure(scale.cost_index_blocks, scale.cost_iterations, args.seed)
            bar.update()
    results["goals"] = report.goals(results)
    results["wall_s"] = round(time.perf_counter() - started, 1)

    print(report.table(results))
    print("\n" + report.goals_table(results["goals"]))
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    written = report.plots(results, args.out)
    print(f"\nwrote {path} and {', '.join(p.name for p in written)} in {results['wall_s']} s")


def _start(path: Path, parameters: dict[str, Any], merge: bool) -> dict[str, Any]:
    """Fresh results, or with ``merge`` the existing ones if they were made with the same parameters."""
    if merge and path.exists():
        previous = json.loads(path.read_text())
        if previous.get("parameters") == json.loads(json.dumps(parameters)):
            return previous
        logger.warning("%s was made with other parameters: starting afresh", path)
    return {"parameters": parameters, "experiments": {}}


def _simulate(
    results: dict[str, Any],
    scale: sweep.Scale,
    engine: EngineModel,
    prefix_config: PrefixPolicyConfig,
    seed: int,
    only: set[str],
) -> None:
    from tqdm import tqdm

    workloads: dict[tuple[object, ...], Workload] = {}
    points = list(sweep.points(scale, engine, seed, only))
    for name in {p.experiment for p in points}:
        results["experiments"][name] = []
    for point in tqdm(points, desc="simulated points", unit="point"):
        if point.workload_key not in workloads:
            workloads[point.workload_key] = point.build()
        workload = workloads[point.workload_key]
        metrics = sweep.run_point(point, workload, engine, seed, prefix_config)
        results["experiments"][point.experiment].append(
            {
                "x": point.x,
                "replicas": point.replicas,
                "load": point.load,
                "requests": workload.requests,
                "reusable_blocks": workload.reusable_blocks,
                "policies": {name: m.to_json() for name, m in metrics.items()},
            }
        )


if __name__ == "__main__":
    main()
