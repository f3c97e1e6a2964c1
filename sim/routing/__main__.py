"""Simulated routing benchmark: every policy on the same simulated cluster and requests, side by side.

    python -m sim.routing [--quick] [--seeds 0,1,2,3] [--jobs 2] [--only EXPERIMENT,...] [--prefix NAME=VALUE ...]

Experiments: load, working_set, hot_prefixes, multi_turn, no_shared_prefix, routing_cost (default: all).
``--prefix`` overrides a field of the production config's prefix policy (``routing.prefix`` in
gemma4-dflash-b300.yaml) for ``prefix`` and ``prefix_approx`` (e.g. imbalance_abs=8, the old default).

Every seed simulates every experiment on its own requests. The first seed is the tuning seed (the policy
was developed watching it); the others are held out, and the tables, goals and plots are their mean with
95% intervals. Prints a table per experiment point and the issue's goals, writes ``routing_sim.json``
and PNG plots to ``docs/routing-simulator/`` (64 replicas, 4 seeds, about half an hour on two cores)
or, with ``--quick`` (16 replicas, seeds 0 and 1, a few minutes), to ``bench/results/``.
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
from sim.results import REPO, results_dir
from sim.routing import report, routing_cost, sweep
from sim.routing.engine import EngineModel
from sim.routing.workloads import Workload
from tools.doc_markers import replace_between

logger = logging.getLogger(__name__)

DOC = REPO / "docs" / "routing-simulator.md"  # its tables are this run's, between markers
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
    parser.add_argument("--seeds", help="tuning seed first, then the held-out ones (default 0,1,2,3; --quick 0,1)")
    parser.add_argument("--jobs", type=int, default=2, help="seeds simulated at once, one process each")
    parser.add_argument("--out", type=Path, help="default: docs/routing-simulator/ (--quick: bench/results/)")
    args = parser.parse_args()
    args.out = args.out or results_dir("routing-simulator", args.quick)
    logging.basicConfig(level=logging.WARNING)
    only = set(args.only.split(","))
    if unknown := only - set(EXPERIMENTS):
        raise SystemExit(f"--only: unknown experiments {sorted(unknown)}; choose from {EXPERIMENTS}")
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2,3")).split(",")]
    scale = sweep.QUICK if args.quick else sweep.FULL
    engine = EngineModel()
    prefix_config = _prefix_config(args.prefix)
    path = args.out / "routing_sim.json"
    results = _start(path, sweep.describe(scale, engine, prefix_config, seeds), args.merge)

    started = time.perf_counter()
    simulated = only - {"routing_cost"}
    if simulated:
        _simulate_seeds(results, scale, prefix_config, seeds, simulated, args.jobs)
    if "routing_cost" in only:  # CPU time: measured after the simulations, not beside them
        from tqdm import tqdm

        with tqdm(total=1, desc="routing cost", unit="bench") as bar:
            results["routing_cost"] = routing_cost.measure(scale.cost_index_blocks, scale.cost_iterations, seeds[0])
            bar.update()
    held_out = [str(s) for s in seeds[1:]] or [str(seeds[0])]
    per_seed = [results["seeds"][s]["experiments"] for s in held_out]
    results["held_out_seeds"] = held_out
    results["experiments"] = report.mean_experiments(per_seed)
    # Each baseline's grid point, picked on the tuning seed; the goals compare against defaults and picks.
    results["tuned"] = report.tune(results["seeds"][str(seeds[0])]["experiments"], sweep.FAMILIES)
    baselines = report.compared(results["tuned"])
    shown = [p for p in sweep.FAMILIES if p == sweep.FAMILIES[p] or p in baselines]  # defaults, and the picks
    cost = results.get("routing_cost")
    results["goals"] = report.goals_over_seeds([report.goals(e, cost, baselines) for e in per_seed])
    results["wall_s"] = round(time.perf_counter() - started, 1)

    print(report.table(results))
    print("\n" + report.goals_table(results["goals"]))
    tables = {
        "saturation": report.saturation_markdown(results, held_out, shown),
        "goals": report.goals_markdown(results["goals"]),
        "calibration": report.calibration_markdown(results["parameters"]),
    }
    if cost:
        tables["cost"] = report.cost_markdown(cost)
    if args.out.resolve() == results_dir("routing-simulator", False):  # the committed run: its tables go in the doc
        for name, text in tables.items():
            replace_between(DOC, f"<!-- routing-sim:{name}:begin -->", f"<!-- routing-sim:{name}:end -->", text)
    else:
        print("\n" + "\n".join(tables.values()))
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    written = report.plots(results, args.out, shown)
    print(f"\nwrote {path} and {', '.join(p.name for p in written)} in {results['wall_s']} s")


def _start(path: Path, parameters: dict[str, Any], merge: bool) -> dict[str, Any]:
    """Fresh results, or with ``merge`` the existing ones if they were made with the same parameters."""
    if merge and path.exists():
        previous = json.loads(path.read_text())
        if previous.get("parameters") == json.loads(json.dumps(parameters)):
            return previous
        logger.warning("%s was made with other parameters: starting afresh", path)
    return {"parameters": parameters, "seeds": {}}


def _simulate_seeds(
    results: dict[str, Any],
    scale: sweep.Scale,
    prefix_config: PrefixPolicyConfig,
    seeds: list[int],
    only: set[str],
    jobs: int,
) -> None:
    """Every seed's experiments, ``jobs`` seeds at a time in worker processes (the runs share nothing)."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=max(1, min(jobs, len(seeds)))) as pool:
        futures = {
            seed: pool.submit(_simulate, scale, prefix_config, seed, only, position)
            for position, seed in enumerate(seeds)
        }
        for seed, future in futures.items():
            experiments = results["seeds"].setdefault(str(seed), {"experiments": {}})["experiments"]
            experiments.update(future.result())


def _simulate(
    scale: sweep.Scale, prefix_config: PrefixPolicyConfig, seed: int, only: set[str], position: int
) -> dict[str, list[dict[str, Any]]]:
    """One seed: each experiment's points, every policy on the same requests."""
    from tqdm import tqdm

    engine = EngineModel()
    experiments: dict[str, list[dict[str, Any]]] = {}
    workloads: dict[tuple[object, ...], Workload] = {}
    points = list(sweep.points(scale, engine, seed, only))
    for name in {p.experiment for p in points}:
        experiments[name] = []
    for point in tqdm(points, desc=f"seed {seed}: simulated points", unit="point", position=position):
        if point.workload_key not in workloads:
            workloads[point.workload_key] = point.build()
        workload = workloads[point.workload_key]
        metrics = sweep.run_point(point, workload, engine, seed, prefix_config)
        experiments[point.experiment].append(
            {
                "x": point.x,
                "replicas": point.replicas,
                "load": point.load,
                "requests": workload.requests,
                "reusable_blocks": workload.reusable_blocks,
                "policies": {name: m.to_json() for name, m in metrics.items()},
            }
        )
    return experiments


if __name__ == "__main__":
    main()
