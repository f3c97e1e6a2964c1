"""The SLO autoscaling decision: how many engine replicas the current and the coming load need.

Pure arithmetic (no Ray, no I/O, no clock): Serve's controller calls it through
:mod:`autoscaling.serve_policy`, the simulator in ``bench/autoscaling_sim`` calls it directly.

**How full is a replica.** Ongoing requests say little about an LLM replica's headroom, so each replica's
*fill* (1.0 = as loaded as it should be) is the largest of

* sequences: ``(running + waiting) / (max_num_seqs x target_fill)``;
* memory: ``kv_cache_usage / kv_cache_target`` (8 long prompts fill a replica that 30 short decodes do not);
* latency: ``max(ttft_p90 / slo.ttft, tpot_p90 / slo.tpot)`` — a replica missing its objective is over
  capacity whatever its counts say; DFlash's speedup falls as the batch grows, so the batch at which a
  replica misses its per-token objective is not a constant, and this term finds it.

The replicas the load **needs** is the sum of the fills, plus requests queued at the handles (no replica
yet) in units of a replica's target batch. Serve's own count of ongoing requests is a floor, for replicas
that have not reported yet.

**Cold starts.** A replica is minutes away, so scaling up provisions for the load projected
``replica_start_s`` ahead from its smoothed growth rate (capped at ``max_lookahead_factor`` x now), at
once, with no delay. **Scaling down** is slow and has hysteresis: only when the projected load would fit
in fewer replicas at ``downscale_headroom`` of their target fill, continuously for ``downscale_delay_s``,
and then to the most replicas that window ever needed — never below what the load needs now. The last
replica goes (``min_replicas`` 0) only after ``scale_to_zero_idle_s`` with nothing in flight or queued.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

_EPS = 1e-9


@dataclass(frozen=True, slots=True)
class ReplicaSignals:
    """What one engine replica reported (means over Serve's look-back window); None: not measured yet."""

    running: float = 0.0
    waiting: float = 0.0
    kv_cache_usage: float = 0.0
    ttft_p90_s: float | None = None
    tpot_p90_s: float | None = None
    tokens_per_s: float = 0.0
    acceptance_length: float | None = None


def signals_from_stats(stats: Mapping[str, float]) -> ReplicaSignals:
    """Signals from an engine replica's stats record (``deployments.replica_stats``; keys absent: unknown)."""
    return ReplicaSignals(
        running=stats.get("num_running", 0.0),
        waiting=stats.get("num_waiting", 0.0),
        kv_cache_usage=stats.get("kv_cache_usage", 0.0),
        ttft_p90_s=stats.get("ttft_p90_s"),
        tpot_p90_s=stats.get("tpot_p90_s"),
        tokens_per_s=stats.get("generation_tokens_per_s", 0.0),
        acceptance_length=stats.get("acceptance_length"),
    )


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """The policy's settings, taken from :class:`serve_app.config.ReplicaConfig` by :func:`params_from_config`."""

    min_replicas: int
    max_replicas: int
    target_batch: float  # max_num_seqs x target_fill: sequences a replica should run
    ttft_p90_s: float
    tpot_p90_s: float
    kv_cache_target: float = 0.85
    replica_start_s: float = 240.0
    max_lookahead_factor: float = 2.0
    trend_half_life_s: float = 30.0
    downscale_delay_s: float = 300.0
    downscale_headroom: float = 0.8
    scale_to_zero_idle_s: float = 600.0


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between ticks (Serve keeps it as a dict in ``policy_state``)."""

    at_s: float | None = None  # time of the last tick
    demand: float = 0.0  # requests in flight or queued at the last tick
    growth_per_s: float = 0.0  # smoothed d(demand)/dt
    low_since_s: float | None = None  # since when fewer replicas would do
    low_peak: int = 0  # the most replicas needed since low_since_s
    idle_since_s: float | None = None  # since when nothing was in flight or queued

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyState:
        fields = {k: data[k] for k in cls.__slots__ if k in data}  # type: ignore[attr-defined]
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Decision:
    """The target replica count, why, and the numbers behind it (logged and exported as metrics)."""

    replicas: int
    reason: str  # hold | up:<signal> | down:low-load | down:idle | floor:min_replicas | cap:max_replicas
    needed: float  # replicas the current load fills
    projected: float  # replicas the load projected replica_start_s ahead fills
    demand: float  # requests in flight or queued
    signal: str  # what dominates the fill: sequences | kv | ttft | tpot | queue | none
    state: PolicyState


def replica_fill(s: ReplicaSignals, p: PolicyParams) -> tuple[float, str]:
    """How full one replica is (1.0: at target) and which signal says so."""
    terms = {
        "sequences": (s.running + s.waiting) / p.target_batch,
        "kv": s.kv_cache_usage / p.kv_cache_target,
        "ttft": (s.ttft_p90_s or 0.0) / p.ttft_p90_s,
        "tpot": (s.tpot_p90_s or 0.0) / p.tpot_p90_s,
    }
    if s.running + s.waiting <= 0:
        terms["ttft"] = terms["tpot"] = 0.0  # stale latency of an idle replica says nothing about its load
    signal = max(terms, key=lambda k: terms[k])
    return terms[signal], signal


def load_needed(
    replicas: Sequence[ReplicaSignals], queued: float, ongoing: float, p: PolicyParams
) -> tuple[float, str]:
    """Replicas the current load fills, and the signal that dominates.

    ``queued``: requests held at the handles (no replica yet); ``ongoing``: Serve's count of requests
    in flight or queued (queued included), a floor for replicas that have not reported.
    """
    total = 0.0
    weights: dict[str, float] = {}
    for s in replicas:
        fill, signal = replica_fill(s, p)
        total += fill
        weights[signal] = weights.get(signal, 0.0) + fill
    queue = queued / p.target_batch
    total += queue
    weights["queue"] = weights.get("queue", 0.0) + queue
    floor = ongoing / p.target_batch
    if floor > total:
        return floor, "sequences"
    if total <= 0:
        return 0.0, "none"
    return total, max(weights, key=lambda k: weights[k])


def _track(state: PolicyState, demand: float, now: float, p: PolicyParams) -> PolicyState:
    """Fold this tick's demand into the smoothed growth rate."""
    if state.at_s is None or now <= state.at_s:
        return replace(state, at_s=now, demand=demand)
    dt = now - state.at_s
    alpha = 1.0 - 0.5 ** (dt / p.trend_half_life_s)
    rate = (demand - state.demand) / dt
    growth = state.growth_per_s + alpha * (rate - state.growth_per_s)
    return replace(state, at_s=now, demand=demand, growth_per_s=growth)


def project(needed: float, demand: float, growth_per_s: float, p: PolicyParams) -> float:
    """Replicas needed ``replica_start_s`` from now if the load keeps growing as it has (never shrinks)."""
    if needed <= 0 or demand <= 0 or growth_per_s <= 0:
        return needed
    factor = min(p.max_lookahead_factor, (demand + growth_per_s * p.replica_start_s) / demand)
    return needed * factor


def _clamp(n: int, p: PolicyParams) -> int:
    return max(p.min_replicas, min(p.max_replicas, n))


def decide(
    replicas: Sequence[ReplicaSignals],
    *,
    queued: float,
    ongoing: float,
    target: int,
    now: float,
    state: PolicyState,
    params: PolicyParams,
) -> Decision:
    """The replica count to ask for now.

    ``replicas``: one entry per running replica; ``target``: the count Serve currently aims for (replicas
    starting included); ``now``: seconds on any monotonic clock, the same one every tick.
    """
    p = params
    needed, signal = load_needed(replicas, queued, ongoing, p)
    demand = max(ongoing, queued + sum(s.running + s.waiting for s in replicas))
    state = _track(state, demand, now, p)
    projected = project(needed, demand, state.growth_per_s, p)
    idle_since = (state.idle_since_s if state.idle_since_s is not None else now) if demand <= 0 else None
    state = replace(state, idle_since_s=idle_since)

    def done(replicas_: int, reason: str, st: PolicyState) -> Decision:
        return Decision(replicas_, reason, needed, projected, demand, signal, st)

    want_up = math.ceil(projected - _EPS)
    if want_up > target:
        n = _clamp(want_up, p)
        if n > target:
            reason = f"up:{signal}" if needed >= target - _EPS else "up:trend"
            return done(n, reason, replace(state, low_since_s=None, low_peak=0))
        if want_up > p.max_replicas:
            return done(target, "cap:max_replicas", replace(state, low_since_s=None, low_peak=0))

    # Fewest replicas that would run at most downscale_headroom of their target fill; at least one while
    # anything is in flight or the deployment has not been idle long enough.
    floor = 0 if idle_since is not None and now - idle_since >= p.scale_to_zero_idle_s - _EPS else 1
    keep = max(floor, math.ceil(projected / p.downscale_headroom - _EPS))
    if target < p.min_replicas:
        return done(p.min_replicas, "floor:min_replicas", replace(state, low_since_s=None, low_peak=0))
    if keep >= target:
        return done(target, "hold", replace(state, low_since_s=None, low_peak=0))
    if keep == 0 and _clamp(0, p) < target:  # idle for scale_to_zero_idle_s already: that was the delay
        return done(_clamp(0, p), "down:idle", replace(state, low_since_s=None, low_peak=0))
    low_since = state.low_since_s if state.low_since_s is not None else now
    peak = max(state.low_peak, keep)
    if now - low_since < p.downscale_delay_s - _EPS:
        return done(target, "hold", replace(state, low_since_s=low_since, low_peak=peak))
    n = _clamp(max(peak, math.ceil(needed - _EPS)), p)
    reason = "down:idle" if n == 0 or demand <= 0 else "down:low-load"
    if n >= target:
        return done(target, "hold", replace(state, low_since_s=None, low_peak=0))
    return done(n, reason, replace(state, low_since_s=None, low_peak=0))
