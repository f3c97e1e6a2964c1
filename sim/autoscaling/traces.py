"""Arrival traces for the autoscaling benchmark: a 10x burst and a diurnal ramp, as rates over time.

Arrivals are a non-homogeneous Poisson process (thinning), requests are long reasoning-style
generations: prompt ~ lognormal around 2,000 tokens, output ~ lognormal around 1,200 tokens, each with
a DFlash acceptance length drawn from the seed's range (sim/routing/engine.py). Rates are in
requests/s for the simulated B300 replica of ``sim.routing.engine.EngineModel``: one replica at
its target batch (48 sequences) carries about 6 of these requests per second.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from sim.routing.engine import EngineModel
from sim.routing.workloads import Turn


@dataclass(frozen=True)
class Trace:
    name: str
    duration_s: float
    rate: Callable[[float], float]  # requests/s at time t
    peak_rps: float
    description: str


def bursty(quiet_rps: float = 2.5, factor: float = 10.0, quiet_s: float = 1800, burst_s: float = 1200) -> Trace:
    """Quiet -> ``factor`` x burst (reached in 60 s) -> quiet, the second quiet twice as long as the first."""
    ramp_s = 60.0

    def rate(t: float) -> float:
        up, down = quiet_s, quiet_s + burst_s
        if t < up or t >= down + ramp_s:
            return quiet_rps
        peak = quiet_rps * factor
        if t < up + ramp_s:
            return quiet_rps + (peak - quiet_rps) * (t - up) / ramp_s
        if t < down:
            return peak
        return peak - (peak - quiet_rps) * (t - down) / ramp_s

    return Trace(
        "burst",
        3 * quiet_s + burst_s,
        rate,
        quiet_rps * factor,
        f"{quiet_rps:g} req/s for {quiet_s / 60:g} min, {factor:g}x for {burst_s / 60:g} min, then quiet",
    )


def diurnal(low_rps: float = 1.0, high_rps: float = 20.0, period_s: float = 3 * 3600) -> Trace:
    """One day compressed into ``period_s``: night low, a smooth ramp to the afternoon peak and back."""

    def rate(t: float) -> float:
        return low_rps + (high_rps - low_rps) * (1 - math.cos(2 * math.pi * t / period_s)) / 2

    return Trace(
        "diurnal",
        period_s,
        rate,
        high_rps,
        f"{low_rps:g} -> {high_rps:g} -> {low_rps:g} req/s over {period_s / 3600:g} h",
    )


def arrivals(trace: Trace, rng: random.Random) -> list[float]:
    """Arrival times by thinning a Poisson process at the trace's peak rate."""
    out, t = [], 0.0
    while True:
        t += rng.expovariate(trace.peak_rps)
        if t >= trace.duration_s:
            return out
        if rng.random() * trace.peak_rps < trace.rate(t):
            out.append(t)


def request(rng: random.Random, engine: EngineModel) -> Turn:
    """One request: prompt and output lengths (lognormal, capped) and its acceptance length."""
    prompt = min(8000, max(64, int(rng.lognormvariate(math.log(2000), 0.6))))
    output = min(6000, max(16, int(rng.lognormvariate(math.log(1200), 0.6))))
    return Turn(prompt, (), output, rng.uniform(*engine.tau_range), 0.0)
