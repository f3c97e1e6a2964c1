"""The experiments: which workloads, at what scale, through which policies.

* ``load`` — shared-prefix groups at a fixed working set, the arrival rate from half the cluster's cold
  capacity to past saturation (load 1.0 = the rate a cluster with no cache hits just sustains).
* ``working_set`` — shared-prefix groups at a fixed load, the reusable working set from 30% to 150% of
  the cluster's KV.
* ``hot_prefixes`` — the load sweep's groups with Zipf(1.0) popularity: a few prefixes take a large
  share of the traffic and must be served by several replicas.
* ``multi_turn`` and ``no_shared_prefix`` — chats whose context grows, and prompts with nothing to reuse.

Every point runs every policy on the same requests (same hashes, same arrival times). The anchors'
baselines run at their shipped defaults and at a small grid over their own knobs (``BASELINE_GRID``,
the real-engine benchmark's grid where the knob exists here); the report picks each one's best point
on the tuning seed. Our ``prefix`` policy runs two ways: ``prefix`` in precise mode (KV events,
``routing.mode: precise``) and ``prefix_approx`` (routing history only, like the anchors' trees). The pooled-cache
reference comes with every run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

from routing.policies import PowerOfTwoPolicy, PrefixPolicy, PrefixPolicyConfig, RoundRobinPolicy
from sim.routing.baselines import RayPrefixConfig, RayPrefixPolicy, SglangCacheAwareConfig, SglangCacheAwarePolicy
from sim.routing.cluster import WARMUP_FRACTION, PolicyFactory, SimConfig, Simulation
from sim.routing.engine import EngineModel
from sim.routing.metrics import RunMetrics
from sim.routing.workloads import Workload, multi_turn, no_shared_prefix, shared_prefix

logger = logging.getLogger(__name__)

# Request shapes (tokens). Prompts are mostly prefix and outputs short, so prefill is most of a cold
# request's cost on a DFlash replica (22 of 29 ms at a full batch): the regime where routing matters.
PREFIX_TOKENS = 1024
SUFFIX_TOKENS = 64
OUTPUT_TOKENS = 64
# Chats: a system prompt every session shares, a per-session context, then 4 turns of 64 + 64 tokens.
# Think times are short so that a session lives ~2.5 s and a 6 s run reaches steady state; what
# matters to routing is the resulting working set (active sessions x context), not the pause itself.
SYSTEM_TOKENS = 256
CONTEXT_TOKENS = 512
TURNS = 4
THINK_MEAN_S = 0.25
# Index entries per replica, as a multiple of the engine's KV blocks. The index also holds the blocks
# of requests routed but not yet computed (recorded at routing time), which share its LRU with the
# blocks the engine confirmed: sized to the pool exactly, the index pushes out up to 3% of the blocks
# an engine still holds under queueing (tests/unit/sim/test_routing.py); a quarter more leaves room for them.
INDEX_HEADROOM = 1.25
HOT_SKEW = 1.0  # Zipf exponent of the hot_prefixes experiment: the top group gets ~1/ln(groups) of traffic
MULTI_TURN_WARMUP = 0.4  # of the arrival horizon: one session lifetime, until turns reach steady state


@dataclass(frozen=True, slots=True)
class PolicySpec:
    name: str
    make: Callable[[EngineModel, PrefixPolicyConfig], PolicyFactory]
    precise: bool = False
    family: str = ""  # the baseline whose grid point this is ("": its own name)

    @property
    def family_name(self) -> str:
        return self.family or self.name


def _prefix(engine: EngineModel, cfg: PrefixPolicyConfig) -> PolicyFactory:
    # The index follows the engine's pool: one entry per KV block a replica can hold, plus headroom.
    sized = replace(cfg, capacity_blocks=round(INDEX_HEADROOM * engine.kv_blocks))
    return lambda clock: PrefixPolicy(sized)


# Each baseline's knobs beside its shipped defaults: Ray's imbalance guard at its docs' example (10) and
# at half a replica's batch (32, our own guard's setting); SGLang's gateway at the thresholds and balance
# setting the real-engine grid tries (bench/peer_routers.py), and with fresher load reports (its shortest
# monitor interval, 1 s) or none of its overload veto, which acts on reports up to an interval old.
BASELINE_GRID: dict[str, tuple[dict[str, float], ...]] = {
    "ray_prefix": ({"imbalanced_threshold": 10}, {"imbalanced_threshold": 32}),
    "sglang_cache_aware": (
        {"cache_threshold": 0.5},
        {"cache_threshold": 0.8},
        {"balance_abs_threshold": 2, "balance_rel_threshold": 1.1},
        {"load_monitor_interval_s": 1},
        {"worker_overload_protection": False},
    ),
}


def _baseline(family: str, knobs: dict[str, float]) -> PolicySpec:
    name = family + ("[" + ",".join(f"{k}={v:g}" for k, v in knobs.items()) + "]" if knobs else "")
    if family == "ray_prefix":
        ray = RayPrefixConfig(**knobs)  # type: ignore[arg-type]
        return PolicySpec(name, lambda e, c: lambda clock: RayPrefixPolicy(clock, ray, seed=0), family=family)
    sglang = SglangCacheAwareConfig(**knobs)  # type: ignore[arg-type]
    return PolicySpec(name, lambda e, c: lambda clock: SglangCacheAwarePolicy(clock, sglang), family=family)


POLICY_SPECS: tuple[PolicySpec, ...] = (
    PolicySpec("round_robin", lambda e, c: lambda clock: RoundRobinPolicy()),
    PolicySpec("pow2", lambda e, c: lambda clock: PowerOfTwoPolicy(seed=0)),
    *(_baseline(family, knobs) for family, grid in BASELINE_GRID.items() for knobs in ({}, *grid)),
    PolicySpec("prefix_approx", _prefix),
    PolicySpec("prefix", _prefix, precise=True),
)
FAMILIES: dict[str, str] = {s.name: s.family_name for s in POLICY_SPECS}


@dataclass(frozen=True, slots=True)
class Scale:
    """How big the experiments are: ``full`` reaches the issue's 64 replicas, ``quick`` runs in a minute."""

    name: str
    replicas: int  # load, multi_turn and no_shared_prefix experiments
    requests: int  # per run of those
    ws_replicas: int  # the working-set sweep
    ws_requests: int
    loads: tuple[float, ...] = (0.5, 0.8, 1.0, 1.2, 1.5)
    load_working_set: float = 1.0  # of the load sweep: the cluster's KV, as llm-d's benchmark (73%) and more
    working_sets: tuple[float, ...] = (0.3, 0.6, 1.0, 1.5)
    ws_load: float = 0.8
    hot_loads: tuple[float, ...] = (1.0, 1.3)
    multi_turn_loads: tuple[float, ...] = (1.0, 2.0)  # chats reuse a quarter even when routed blindly
    multi_turn_duration_s: float = 6.0
    flat_loads: tuple[float, ...] = (0.8, 1.0)  # no_shared_prefix
    # Index entries per replica in the routing-cost benchmark: 16k x 64 replicas is 1M entries, ~400 MiB
    # (PrefixPolicyConfig's default of 65,536 would be 4M entries, ~1.6 GiB, per router).
    cost_index_blocks: int = 16_384
    cost_iterations: int = 300


QUICK = Scale(
    "quick",
    replicas=16,
    requests=2500,
    ws_replicas=8,
    ws_requests=2000,
    loads=(0.6, 1.0, 1.4),
    hot_loads=(1.2,),
    multi_turn_duration_s=4.0,
    flat_loads=(1.0,),
    cost_index_blocks=4096,
    cost_iterations=100,
)
FULL = Scale("full", replicas=64, requests=12_000, ws_replicas=16, ws_requests=8000)


@dataclass(frozen=True, slots=True)
class Point:
    """One experiment point: a workload at a scale and load, run through every policy."""

    experiment: str
    x: float  # the swept value: load or working set
    replicas: int
    load: float
    workload_key: tuple[object, ...]  # points with equal keys share one workload (built once)
    build: Callable[[], Workload] = field(compare=False)


def chat_sessions(duration_s: float, load: float, replicas: int, engine: EngineModel) -> int:
    """Sessions whose first turns arrive over ``duration_s`` at ``load``.

    Chats are sized by time, not requests: a session lives ~2.5 s, so a run must last a few lifetimes
    to reach steady state whatever the rate.
    """
    mean_prompt = SYSTEM_TOKENS + CONTEXT_TOKENS + OUTPUT_TOKENS + (TURNS - 1) / 2 * 2 * OUTPUT_TOKENS
    rate = load * replicas * engine.cold_capacity_rps(mean_prompt, OUTPUT_TOKENS)
    return max(1, round(duration_s * rate / TURNS))


def chats(sessions: int, engine: EngineModel, seed: int) -> Workload:
    return multi_turn(
        sessions,
        TURNS,
        SYSTEM_TOKENS,
        CONTEXT_TOKENS,
        OUTPUT_TOKENS,
        OUTPUT_TOKENS,
        THINK_MEAN_S,
        engine.tau_range,
        seed,
    )


def shared_prefix_workload(
    working_set: float, replicas: int, requests: int, engine: EngineModel, seed: int, skew: float = 0.0
) -> Workload:
    """Groups so that their prefixes fill ``working_set`` of the cluster's KV; ``requests`` in all."""
    prefix_blocks = PREFIX_TOKENS // engine.block_size
    groups = max(1, round(working_set * replicas * engine.kv_blocks / prefix_blocks))
    return shared_prefix(groups, requests, PREFIX_TOKENS, SUFFIX_TOKENS, OUTPUT_TOKENS, engine.tau_range, seed, skew)


def points(scale: Scale, engine: EngineModel, seed: int, only: set[str] | None = None) -> Iterator[Point]:
    n, r = scale.replicas, scale.requests

    def want(name: str) -> bool:
        return only is None or name in only

    if want("load"):
        ws = scale.load_working_set
        for load in scale.loads:
            yield Point(
                "load", load, n, load, ("shared", ws, n, r), lambda: shared_prefix_workload(ws, n, r, engine, seed)
            )
    if want("working_set"):
        wn, wr = scale.ws_replicas, scale.ws_requests
        for ws in scale.working_sets:
            yield Point(
                "working_set",
                ws,
                wn,
                scale.ws_load,
                ("shared", ws, wn, wr),
                lambda ws=ws: shared_prefix_workload(ws, wn, wr, engine, seed),
            )
    if want("hot_prefixes"):
        ws = scale.load_working_set
        for load in scale.hot_loads:
            yield Point(
                "hot_prefixes",
                load,
                n,
                load,
                ("shared", ws, n, r, HOT_SKEW),
                lambda: shared_prefix_workload(ws, n, r, engine, seed, HOT_SKEW),
            )
    if want("multi_turn"):
        for load in scale.multi_turn_loads:
            sessions = chat_sessions(scale.multi_turn_duration_s, load, n, engine)
            yield Point(
                "multi_turn", load, n, load, ("multi_turn", sessions), lambda k=sessions: chats(k, engine, seed)
            )
    if want("no_shared_prefix"):
        for load in scale.flat_loads:
            yield Point(
                "no_shared_prefix",
                load,
                n,
                load,
                ("no_shared_prefix", r),
                lambda: no_shared_prefix(r, PREFIX_TOKENS + SUFFIX_TOKENS, OUTPUT_TOKENS, engine.tau_range, seed),
            )


def run_point(
    point: Point,
    workload: Workload,
    engine: EngineModel,
    seed: int,
    prefix_config: PrefixPolicyConfig,
    specs: tuple[PolicySpec, ...] = POLICY_SPECS,
) -> dict[str, RunMetrics]:
    out = {}
    warmup = MULTI_TURN_WARMUP if point.experiment == "multi_turn" else WARMUP_FRACTION
    for spec in specs:
        config = SimConfig(
            replicas=point.replicas,
            engine=engine,
            load=point.load,
            precise=spec.precise,
            warmup_fraction=warmup,
            seed=seed,
        )
        out[spec.name] = Simulation(workload, spec.make(engine, prefix_config), config).run()
        logger.debug("%s x=%s %s: %s", point.experiment, point.x, spec.name, out[spec.name])
    return out


def describe(
    scale: Scale, engine: EngineModel, prefix_config: PrefixPolicyConfig, seeds: list[int]
) -> dict[str, object]:
    """The run's parameters, for the JSON."""
    return {
        "seeds": seeds,
        "scale": asdict(scale),
        "engine": asdict(engine),
        "calibration": [
            asdict(f) | {"ar_error": f.ar_error, "dflash_error": f.dflash_error} for f in engine.calibration()
        ],
        "prefix_config": asdict(prefix_config),
        "shapes": {
            "prefix_tokens": PREFIX_TOKENS,
            "suffix_tokens": SUFFIX_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "system_tokens": SYSTEM_TOKENS,
            "context_tokens": CONTEXT_TOKENS,
            "turns": TURNS,
            "think_mean_s": THINK_MEAN_S,
            "hot_skew": HOT_SKEW,
        },
    }
