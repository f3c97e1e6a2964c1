"""The SLO autoscaling decision: how many engine replicas the current and the coming load need.

Pure arithmetic (no Ray, no I/O, no clock): Serve's controller calls it through
:mod:`deployments.autoscaler`, the simulator in ``sim/autoscaling`` calls it directly.

**How full is a replica.** Ongoing requests say little about an LLM replica's headroom, so each replica's
*fill* (1.0 = as loaded as it should be) is the largest of

* sequences: ``(running + waiting) / (max_num_seqs x target_fill)``;
* memory: ``kv_cache_usage / kv_cache_target`` (8 long prompts fill a replica that 30 short decodes do not);
* latency: ``ttft_p90 / slo.ttft`` or ``tpot_p90 / slo.tpot`` (capped at 2) — a replica missing its
  objective is over capacity whatever its counts say; DFlash's speedup falls as the batch grows, so the
  batch at which a replica misses its per-token objective is not a constant, and this term finds it.

**Which batch is full.** The configured target batch is an upper bound: the batch a replica can run
within the decode objective is measured (``slo_batch``: running x objective / tpot p90, a safe
under-estimate), and every count is in units of the smaller of the two. A replica is then full before
it misses, not after, which matters when the next one is minutes away.

The replicas the load **needs** is the sum of the fills, plus requests queued at the handles (no replica
yet) in units of a replica's batch. Serve's own count of ongoing requests is a floor, for replicas
that have not reported yet.

**Cold starts.** A replica is minutes away, so scaling up is immediate, to the larger of (a) what the
load needs and (b) the *flow*: the arrival rate (completions + growth of what is in the system) over one
replica's measured service rate at its batch, the rate projected ``replica_start_s`` ahead while it
rises (Holt-smoothed, above a noise band of a quarter replica per start time, capped at
``max_lookahead_factor``), plus the handle queue drained within ``queue_drain_s``. Until a replica has
measured its service rate, the need itself is projected ahead from the growth of the requests in the
system (above a noise band of one batch per start time). Projecting the arrival rate rather than the
backlog matters on a ramp: a backlog's growth, projected, asked for a fleet that the rate never needed.

**Scaling down** is slow and has hysteresis: only when the projected load would fit in fewer replicas
at ``downscale_headroom`` of their target fill, continuously for ``downscale_delay_s`` x the share of
replicas that stays (at least half: a drained burst does not hold a whole fleet for the full delay);
never below what the load needs now, nor below the output tokens/s the running sequences need (each
at most one token per decode objective) over what one replica delivers at its target batch (learned
from replicas running near it: small batches are faster per sequence, so their counts understate what
fewer, fuller replicas would carry; speed beyond the objective is headroom, not load), nor below the
flow, which on a rising ramp includes the rate about to come. The last replica goes
(``min_replicas`` 0) only after ``scale_to_zero_idle_s`` with nothing in flight or queued.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from contracts.engine_report import ReplicaReport

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
    finished_per_s: float = 0.0  # requests the replica completed per second (its measured service rate)
    acceptance_length: float | None = None  # DFlash's recent mean tokens per draft-and-verify step
    recent_running: float | None = None  # the batch tokens_per_s was delivered at; None: ``running``

    @property
    def window_batch(self) -> float:
        """The running batch over the window ``tokens_per_s`` covers (the last step's when not measured)."""
        return self.running if self.recent_running is None else self.recent_running


def signals_from_report(report: ReplicaReport | None) -> ReplicaSignals:
    """The signals in an engine replica's report; None (it has not reported yet): nothing measured."""
    if report is None:
        return ReplicaSignals()
    return ReplicaSignals(
        running=report.num_running,
        waiting=report.num_waiting,
        kv_cache_usage=report.kv_cache_usage,
        ttft_p90_s=report.ttft_p90_s,
        tpot_p90_s=report.tpot_p90_s,
        tokens_per_s=report.generation_tokens_per_s,
        finished_per_s=report.finished_requests_per_s,
        acceptance_length=report.recent_acceptance_length,
        recent_running=report.recent_running,
    )


@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class SloParams:
    """The latency objective the policy holds and its tunables; their one definition (``replicas.autoscaling.slo``
    in the app's YAML files embeds this class)."""

    ttft_p90_s: float = Field(2.0, gt=0, description="Objective: time to first token, 90th percentile, in seconds.")
    tpot_p90_s: float = Field(
        0.05,
        gt=0,
        description="Objective: time per output token after the first (decode latency), 90th percentile, seconds.",
    )

    kv_cache_target: float = Field(
        0.85, gt=0, le=1, description="KV cache usage counted as a full replica (above it vLLM preempts)."
    )
    replica_start_s: float = Field(
        240,
        ge=0,
        description="Expected time from asking for a replica to its serving (node, weights, CUDA graphs): the "
        "policy provisions for the load it projects this far ahead.",
    )
    max_lookahead_factor: float = Field(
        2.0, ge=1, description="Cap on the projected load as a multiple of the current one (a spike is not a trend)."
    )
    trend_half_life_s: float = Field(
        30, gt=0, description="Half-life of the smoothing of the load's growth rate (noise vs reaction time)."
    )
    queue_drain_s: float = Field(
        120,
        gt=0,
        description="Requests queued at the handles are provisioned for as if they must drain within this long "
        "(shorter: more replicas after a burst, better latency, more GPU time).",
    )
    downscale_headroom: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Hysteresis: replicas are removed only while the rest would run at most this share of their "
        "target fill, for the whole of downscale_delay_s.",
    )
    scale_to_zero_idle_s: float = Field(
        600, ge=0, description="With min_replicas 0: how long a deployment must be idle before its last replica goes."
    )


@pydantic_dataclass(frozen=True, slots=True, config=ConfigDict(extra="forbid"))
class PolicyParams:
    """What the policy runs with for one deployment: its bounds and batch (derived from the model's replica and
    engine settings by ``serve_app/serve_options.py``) and its :class:`SloParams`."""

    min_replicas: int
    max_replicas: int
    target_batch: float  # max_num_seqs x target_fill: sequences a replica should run
    downscale_delay_s: float
    slo: SloParams = Field(default_factory=SloParams)


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy remembers between ticks (Serve keeps it as a dict in ``policy_state``)."""

    at_s: float | None = None  # time of the last tick
    demand: float = 0.0  # smoothed level of the requests in flight or queued
    growth_per_s: float = 0.0  # smoothed d(demand)/dt
    arrivals_per_s: float = 0.0  # smoothed arrival rate (completions + growth of what is in the system)
    arrival_growth_per_s2: float = 0.0  # smoothed d(arrivals_per_s)/dt
    capacity_tps: float | None = None  # output tokens/s a replica delivers at its target batch, per unit of
    # acceptance length (learned; at a fixed batch a step costs the same whatever is accepted)
    low_since_s: float | None = None  # since when fewer replicas would do
    down_at_s: float | None = None  # the last scale-down
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


# One replica counts as at most this many replicas' worth of load, whatever its signals say. A replica
# missing its latency objective: enough to add capacity, not a multiplier (a TTFT of 30 s against 2 s is
# a queue, which the flow term sizes). Its sequences: what waits on a replica is served by that replica
# alone (Serve never moves a request), so new replicas help only new arrivals, which the flow term sizes;
# Serve's router holds a replica at max_ongoing_requests (queue_headroom / target_fill = 2 target batches
# by default), so past that, the waiting came in requests of many sequences (prompts x n): one 256-sequence
# completions batch asked for 13 replicas before this cap (tests/unit/autoscaling).
FILL_CAP = 2.0
MIN_DELAY_SHARE = 0.5  # of downscale_delay_s, however large the excess (downscale_delay)
FULL_ENOUGH = 0.75  # share of the target batch at which a replica's tokens/s measures its capacity
CAPACITY_ALPHA = 0.1  # weight of each new capacity measurement
# Growth of the arrival rate below this share of one replica's service rate per replica start is noise
# (a steady Poisson rate's smoothed slope wanders); a ramp is above it (flow_needed).
RATE_NOISE_REPLICAS = 0.25


def replica_fill(s: ReplicaSignals, p: PolicyParams) -> tuple[float, str]:
    """How full one replica is (1.0: at target) and which signal says so."""
    terms = {
        "sequences": min(FILL_CAP, (s.running + s.waiting) / p.target_batch),
        "kv": s.kv_cache_usage / p.slo.kv_cache_target,
    }
    if s.running + s.waiting > 0:  # stale latency of an idle replica says nothing about its load
        # Latency first: a batch sized to the decode objective (slo_batch) ties its sequences term with the
        # latency that sized it, and the latency is what the operator should read as the reason.
        terms = {
            "tpot": min(FILL_CAP, (s.tpot_p90_s or 0.0) / p.slo.tpot_p90_s),
            "ttft": min(FILL_CAP, (s.ttft_p90_s or 0.0) / p.slo.ttft_p90_s),
        } | terms
    top = max(terms.values())
    signal = next(k for k, v in terms.items() if v >= top - _EPS)  # ties (to rounding) go to the first
    return top, signal


def load_needed(
    replicas: Sequence[ReplicaSignals], queued: float, ongoing: float, p: PolicyParams
) -> tuple[float, str]:
    """Replicas the current load needs, and the signal that dominates.

    The replicas' fills plus requests held at the handles (``queued``, no replica yet) in units of a
    target batch; at least Serve's count of requests in flight or queued (``ongoing``, queued included)
    over a target batch, for replicas that have not reported.
    """
    fills = 0.0
    weights: dict[str, float] = {}
    for s in replicas:
        fill, signal = replica_fill(s, p)
        fills += fill
        weights[signal] = weights.get(signal, 0.0) + fill
    queue = queued / p.target_batch
    weights["queue"] = weights.get("queue", 0.0) + queue
    floor = ongoing / p.target_batch
    if floor > fills + queue + _EPS:
        return floor, "sequences"
    if fills + queue <= 0:
        return 0.0, "none"
    return fills + queue, max(weights, key=lambda k: weights[k])


def service_rate(replicas: Sequence[ReplicaSignals], p: PolicyParams) -> float | None:
    """Requests/s one replica completes at its target batch, from what the replicas measured (Little's law).

    Per-sequence speed falls as a batch grows (DFlash's speedup most of all), so measured at a smaller
    batch this is optimistic; the fill terms cover that side.
    """
    busy = [s for s in replicas if s.running > 0 and s.finished_per_s > 0]
    running = sum(s.running for s in busy)
    if running <= 0:
        return None
    return sum(s.finished_per_s for s in busy) / running * p.target_batch


def _holt(level: float, slope: float, value: float, dt: float, half_life_s: float) -> tuple[float, float]:
    """One step of Holt's linear smoothing: the new level and slope after ``value`` arrived ``dt`` later."""
    alpha = 1.0 - 0.5 ** (dt / half_life_s)
    expected = level + slope * dt
    new_level = expected + alpha * (value - expected)
    return new_level, slope + alpha * ((new_level - level) / dt - slope)


def _track(state: PolicyState, demand: float, completions_per_s: float, now: float, p: PolicyParams) -> PolicyState:
    """Fold this tick's demand and arrival rate into their smoothed levels and growth rates (Holt).

    The growth is the slope of the smoothed level, not of the raw counts: Poisson noise of a few
    requests between metric pushes would otherwise read as a trend and add replicas for nothing. The
    arrival rate is the completions plus the growth of what is in the system (conservation).
    """
    if state.at_s is None or now <= state.at_s:
        if state.at_s is not None:
            return replace(state, at_s=now)
        return replace(state, at_s=now, demand=demand, arrivals_per_s=completions_per_s)
    dt, half_life = now - state.at_s, p.slo.trend_half_life_s
    level, growth = _holt(state.demand, state.growth_per_s, demand, dt, half_life)
    rate = max(0.0, completions_per_s + growth)
    rate_level, rate_growth = _holt(state.arrivals_per_s, state.arrival_growth_per_s2, rate, dt, half_life)
    return replace(
        state,
        at_s=now,
        demand=level,
        growth_per_s=growth,
        arrivals_per_s=max(0.0, rate_level),
        arrival_growth_per_s2=rate_growth,
    )


def project(needed: float, demand: float, growth_per_s: float, p: PolicyParams) -> float:
    """Replicas needed ``replica_start_s`` from now if the load keeps growing as it has (never shrinks).

    Growth below one target batch per replica start is treated as noise (a steady Poisson load's
    smoothed slope wanders that much); a surge is far above it.
    """
    surge = growth_per_s - p.target_batch / p.slo.replica_start_s if p.slo.replica_start_s > 0 else 0.0
    if needed <= 0 or demand <= 0 or surge <= 0:
        return needed
    factor = min(p.slo.max_lookahead_factor, (demand + surge * p.slo.replica_start_s) / demand)
    return needed * factor


def flow_needed(
    replicas: Sequence[ReplicaSignals],
    queued: float,
    growth_per_s: float,
    p: PolicyParams,
    arrival_growth_per_s2: float = 0.0,
) -> float | None:
    """Replicas that serve the arrival rate at their target batch and drain the handle queue in ``queue_drain_s``.

    Arrivals = completions + growth of what is in the system (conservation), so a rising queue asks for
    the replicas its arrival rate needs, not for one replica per target batch of backlog: a backlog
    that built up while replicas were starting is gone by the time more would be up. A rising arrival
    rate (``arrival_growth_per_s2``, above the noise band) is provisioned for ``replica_start_s`` ahead,
    up to ``max_lookahead_factor``: on a ramp, the replica asked for now serves the rate of when it is up,
    and the replicas serving now must not be removed for a rate that is about to return.
    """
    mu = service_rate(replicas, p)
    if mu is None:
        return None
    arrivals = sum(s.finished_per_s for s in replicas) + max(0.0, growth_per_s)
    start = p.slo.replica_start_s
    if start > 0 and arrival_growth_per_s2 > RATE_NOISE_REPLICAS * mu / start:
        arrivals = min(p.slo.max_lookahead_factor * arrivals, arrivals + arrival_growth_per_s2 * start)
    return arrivals / mu + queued / (mu * p.slo.queue_drain_s)


def _tau(s: ReplicaSignals) -> float:
    return s.acceptance_length or 1.0  # AR: one token per step


def learn_capacity(replicas: Sequence[ReplicaSignals], state: PolicyState, p: PolicyParams) -> PolicyState:
    """Update the tokens/s one replica delivers at its target batch, from replicas running near it.

    A replica's speed per sequence is not a constant (DFlash gains less as the batch grows), so a
    replica seen at a small batch says little about what it does at its target; one seen near the
    target does. Kept per unit of acceptance length: a step at a given batch costs the same whatever
    the drafter got accepted, so when the traffic mix moves DFlash's acceptance, capacity moves with it.
    Tokens/s is divided by the batch over the same window: a replica that a burst has just filled
    reports a full batch now and, over its window, the tokens of the idle seconds before (the last
    step's batch would read as a slow replica, and the first reading sets the capacity).
    """
    seen = [
        s.tokens_per_s * p.target_batch / s.window_batch / _tau(s)
        for s in replicas
        if s.window_batch >= FULL_ENOUGH * p.target_batch and s.tokens_per_s > 0
    ]
    if not seen:
        return state
    observed = sum(seen) / len(seen)
    if state.capacity_tps is None:
        return replace(state, capacity_tps=observed)
    return replace(state, capacity_tps=state.capacity_tps + CAPACITY_ALPHA * (observed - state.capacity_tps))


def token_needed(replicas: Sequence[ReplicaSignals], state: PolicyState, p: PolicyParams) -> float:
    """Replicas the tokens/s the running sequences need, at the learned capacity (0 until learned).

    Guards scale-downs: replicas at small batches are fast per sequence, so their fill understates what
    fewer, fuller replicas would carry; tokens/s over capacity at the target batch does not. What a
    replica's sequences *need* is at most one token per ``tpot_p90_s`` each: speed beyond the objective
    is headroom that fewer, fuller replicas may spend, not load (counting it held two CPU replicas for
    two streams whose objective one replica met many times over). Each replica counts the smaller of
    what it delivers and what its window's batch needs, in steps (tokens / acceptance length), what a
    replica's capacity is made of.
    """
    if not state.capacity_tps:
        return 0.0
    need = sum(min(s.tokens_per_s, s.window_batch / p.slo.tpot_p90_s) / _tau(s) for s in replicas)
    return need / state.capacity_tps


def downscale_delay(keep: int, target: int, p: PolicyParams) -> float:
    """How long fewer replicas must do before they go: ``downscale_delay_s`` x the share that stays.

    Idle replicas cost GPU time in proportion to their number, and the more of them there are, the
    less a misjudged removal hurts (the headroom stays). 2 -> 1 and 16 -> 4 wait half the delay (the
    floor): a drained burst does not hold a fleet for the full delay.
    """
    return p.downscale_delay_s * min(1.0, max(MIN_DELAY_SHARE, keep / max(1, target)))


MIN_SLO_BATCH_SAMPLE = 4  # sequences a replica must run for its decode latency to size the batch


def slo_batch(replicas: Sequence[ReplicaSignals], p: PolicyParams) -> float:
    """The batch a replica can run within the decode-latency objective: at most the configured target.

    Time per output token grows with the batch, less than in proportion (a step has a fixed cost), so
    ``running x objective / tpot_p90`` under-estimates the batch that meets it: safe while the batch is
    small, exact as it nears the objective. Averaged over the replicas that run enough sequences to
    measure, weighted by what they run. Without it, a replica is counted full only at the target batch,
    and the latency term sees it miss only once it has: with replicas minutes away, too late.
    """
    measured = [
        (s.running, s.running * p.slo.tpot_p90_s / s.tpot_p90_s)
        for s in replicas
        if s.tpot_p90_s and s.running >= MIN_SLO_BATCH_SAMPLE
    ]
    if not measured:
        return p.target_batch
    estimate = sum(w * b for w, b in measured) / sum(w for w, _ in measured)
    return max(1.0, min(p.target_batch, estimate))


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
    # Every count below is in units of a batch a replica can run within the objective.
    p = replace(params, target_batch=slo_batch(replicas, params))
    needed, signal = load_needed(replicas, queued, ongoing, p)
    # A replica's backlog counts up to FILL_CAP batches here too: its growth is what the trend projects.
    held = sum(min(s.running + s.waiting, FILL_CAP * p.target_batch) for s in replicas)
    demand = max(ongoing, queued + held)
    state = _track(state, demand, sum(s.finished_per_s for s in replicas), now, p)
    # After a scale-down the remaining replicas run larger, slower batches, so the same arrivals hold
    # more requests in flight for a while: that growth is our own doing, not a surge.
    settling = state.down_at_s is not None and now - state.down_at_s < p.slo.replica_start_s
    state = learn_capacity(replicas, state, p)
    flow = flow_needed(replicas, queued, state.growth_per_s, p, state.arrival_growth_per_s2)
    if flow is not None:
        projected = max(needed, flow)
    else:
        projected = needed if settling else project(needed, demand, state.growth_per_s, p)
    # Idle is counted only while a replica is up to take a request: replicas still starting (at deploy
    # or from zero) have served nothing yet, and no request could have arrived at them.
    idle = demand <= 0 and len(replicas) > 0
    idle_since = (state.idle_since_s if state.idle_since_s is not None else now) if idle else None
    state = replace(state, idle_since_s=idle_since)

    def done(replicas_: int, reason: str, st: PolicyState) -> Decision:
        return Decision(replicas_, reason, needed, projected, demand, signal, st)

    want_up = math.ceil(projected - _EPS)
    if want_up > target:
        n = _clamp(want_up, p)
        if n > target:
            reason = f"up:{signal}" if needed >= target - _EPS else "up:trend"
            return done(n, reason, replace(state, low_since_s=None))
        if want_up > p.max_replicas:
            return done(target, "cap:max_replicas", replace(state, low_since_s=None))

    # Fewest replicas that would run at most downscale_headroom of their target fill; at least one while
    # anything is in flight or the deployment has not been idle long enough.
    floor = 0 if idle_since is not None and now - idle_since >= p.slo.scale_to_zero_idle_s - _EPS else 1
    keep = max(floor, math.ceil(max(projected, token_needed(replicas, state, p)) / p.slo.downscale_headroom - _EPS))
    if target < p.min_replicas:
        return done(p.min_replicas, "floor:min_replicas", replace(state, low_since_s=None))
    if keep >= target:
        return done(target, "hold", replace(state, low_since_s=None))
    if keep == 0 and _clamp(0, p) < target:  # idle for scale_to_zero_idle_s already: that was the delay
        return done(_clamp(0, p), "down:idle", replace(state, low_since_s=None, down_at_s=now))
    low_since = state.low_since_s if state.low_since_s is not None else now
    if now - low_since < downscale_delay(keep, target, p) - _EPS:
        return done(target, "hold", replace(state, low_since_s=low_since))
    n = _clamp(max(keep, math.ceil(needed - _EPS)), p)
    if n >= target:
        return done(target, "hold", replace(state, low_since_s=None))
    # Requests still finishing on the leaving replicas are in no metric Serve gives a policy: the idle
    # clock restarts, so the last replica does not go while they may still be streaming.
    after = replace(state, low_since_s=None, down_at_s=now, idle_since_s=None)
    return done(n, "down:idle" if demand <= 0 else "down:low-load", after)
