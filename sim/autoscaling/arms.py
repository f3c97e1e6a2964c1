"""The autoscaling set-ups compared: our SLO policy, Serve's default over a grid of its own knobs, static fleets.

Each autoscaled arm is a Serve ``AutoscalingConfig`` plus the policy callable, built from the production
config (``serve_app/configs/gemma4-dflash-b300.yaml``) exactly as ``serve_app/build.py`` builds them, so
the benchmark runs what would be deployed. Serve's default is not judged at one hand-picked setting: it
gets a grid over the ``AutoscalingConfig`` knobs a Serve user would tune (Ray 2.60), and the point it
is compared at is chosen on tuning seeds only (``sim/autoscaling/__main__.py``). A static fleet (fixed
replicas, warm from the start, no autoscaler) is the baseline any autoscaler must beat to be worth it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig

from config import ModelConfig
from deployments.autoscaler import SloPolicy
from serve_app.serve_options import autoscaling_config
from sim.autoscaling.serve_loop import ControlLoop, PolicyFn, ServeLoop, StaticLoop
from sim.autoscaling.traces import Trace
from sim.production import production_model

# Serve's default policy, grid over AutoscalingConfig's knobs (Ray 2.60 names; its defaults in brackets):
# target_ongoing_requests [2, meant for generic deployments: 24 = 0.375 x max_num_seqs 64 is the config's],
# (upscale_delay_s, downscale_delay_s) [30, 600; the production config's 10, 300], downscaling_factor
# [None = 1.0; the reviewer's 0.3], upscaling_factor [None = 1.0; 2.0 doubles each step up, what a user
# whose fleet lags a burst tries]. The deprecated smoothing_factor sets both factors at once, so the two
# cover it. 2 x 2 x 2 x 2 = 16 points keeps a full run near 10 minutes on 2 cores (each point runs on
# every tuning seed of both traces).
GRID_TARGETS = (24, 48)
GRID_DELAYS = ((10.0, 300.0), (30.0, 600.0))
GRID_DOWNSCALING_FACTORS: tuple[float | None, ...] = (None, 0.3)
GRID_UPSCALING_FACTORS: tuple[float | None, ...] = (None, 2.0)
# The grid points documented before the grid existed: the config's delays, and Serve's own delays.
SHIPPED = ("default-t24-up10-down300", "default-t24-up30-down600")
# One simulated replica at its target batch carries about this many of the traces' requests per second
# (sim/autoscaling/traces.py): what the static fleets are sized with.
REPLICA_RPS = 6.0


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    policy: str  # "slo", "default" or "static"
    serve_config: dict[str, Any]
    static_replicas: int | None = None

    def loop(self) -> ControlLoop:
        if self.static_replicas is not None:
            return StaticLoop(self.static_replicas)
        cfg = AutoscalingConfig(**{k: v for k, v in self.serve_config.items() if k != "policy"})
        fn: PolicyFn = replica_queue_length_autoscaling_policy
        if self.policy == "slo":
            fn = SloPolicy(**self.serve_config["policy"]["policy_kwargs"])
        return ServeLoop(fn, cfg)


def benchmark_model(max_replicas: int = 16, min_replicas: int = 1) -> ModelConfig:
    """The production model's engine and policy settings, between the benchmark's bounds.

    The shipped floor (8: one node's GPUs, paid for by the cluster's minimum node anyway) would hide
    what the policies do at low load, so the benchmark scales from one replica.
    """
    model = production_model()
    bounds = {"max_replicas": max_replicas, "min_replicas": min_replicas}
    return model.model_copy(update={"replicas": model.replicas.model_copy(update=bounds)})


def slo_arm(model: ModelConfig) -> Arm:
    slo = model.replicas.autoscaling.model_copy(update={"policy": "slo"})
    ours = model.model_copy(update={"replicas": model.replicas.model_copy(update={"autoscaling": slo})})
    return Arm("slo", "SLO policy (autoscaling/policy.py)", "slo", autoscaling_config(ours))


def default_arm(
    model: ModelConfig,
    target: int,
    up_s: float,
    down_s: float,
    downscaling_factor: float | None = None,
    upscaling_factor: float | None = None,
) -> Arm:
    """Serve's default policy with these knobs, the rest (bounds, look-back) from the production config."""
    auto = model.replicas.autoscaling.model_copy(update={"policy": "ongoing_requests"})
    update: dict[str, Any] = {
        "autoscaling": auto,
        "target_fill": target / model.engine.max_num_seqs,
        "upscale_delay_s": up_s,
        "downscale_delay_s": down_s,
    }
    cfg = autoscaling_config(model.model_copy(update={"replicas": model.replicas.model_copy(update=update)}))
    name = f"default-t{target}-up{up_s:g}-down{down_s:g}"
    description = f"Serve default, target_ongoing_requests={target}, upscale/downscale delay {up_s:g}/{down_s:g} s"
    factors = (("downscaling_factor", "df", downscaling_factor), ("upscaling_factor", "uf", upscaling_factor))
    for knob, short, value in factors:
        if value is not None:
            cfg[knob] = value
            name += f"-{short}{value:g}"
            description += f", {knob}={value:g}"
    return Arm(name, description, "default", cfg)


def grid_arms(model: ModelConfig) -> list[Arm]:
    """Every point of Serve's default-policy grid (the shipped settings included)."""
    return [
        default_arm(model, target, up_s, down_s, down_factor, up_factor)
        for target, (up_s, down_s), down_factor, up_factor in itertools.product(
            GRID_TARGETS, GRID_DELAYS, GRID_DOWNSCALING_FACTORS, GRID_UPSCALING_FACTORS
        )
    ]


def arms(model: ModelConfig) -> list[Arm]:
    """Our policy, then Serve's default at the shipped settings."""
    shipped = [a for a in grid_arms(model) if a.name in SHIPPED]
    return [slo_arm(model), *shipped]


def static_sizes(trace: Trace, replica_rps: float = REPLICA_RPS, step_s: float = 1.0) -> dict[int, list[str]]:
    """Fixed replica counts worth comparing against, each with what it is sized to.

    ``p95``: the 95th percentile of the offered rate over the trace's time, ``peak``: its maximum, each
    over one replica's capacity, rounded up; plus ``peak+1`` (one replica of headroom for Poisson
    bursts above the mean rate). A count two labels share is run once.
    """
    rates = sorted(trace.rate(i * step_s) for i in range(int(trace.duration_s / step_s)))
    p95 = rates[min(len(rates) - 1, math.ceil(0.95 * len(rates)) - 1)]
    peak = max(rates[-1], trace.peak_rps)
    sizes: dict[int, list[str]] = {}
    for label, n in (("p95", math.ceil(p95 / replica_rps)), ("peak", math.ceil(peak / replica_rps))):
        sizes.setdefault(n, []).append(label)
    sizes.setdefault(max(sizes) + 1, []).append("peak+1")
    return sizes


def static_arm(replicas: int, labels: list[str]) -> Arm:
    return Arm(
        f"static-{replicas}",
        f"{replicas} replicas, warm from the start, never scaled (sized to {', '.join(labels)} load)",
        "static",
        {},
        replicas,
    )


def slo_of(model: ModelConfig) -> tuple[float, float]:
    """(TTFT, time per output token) a request must meet to count as within the objective."""
    slo = model.replicas.autoscaling.slo
    return slo.ttft_p90_s, slo.tpot_p90_s
