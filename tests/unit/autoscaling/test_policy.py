"""The SLO autoscaling policy's arithmetic (autoscaling/policy.py), tick by tick on a fake clock."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import pytest

from autoscaling.policy import (
    FILL_CAP,
    MIN_DELAY_SHARE,
    PolicyParams,
    PolicyState,
    ReplicaSignals,
    SloParams,
    decide,
    downscale_delay,
    flow_needed,
    learn_capacity,
    load_needed,
    project,
    replica_fill,
    service_rate,
    signals_from_report,
    slo_batch,
    token_needed,
)

P = PolicyParams(
    min_replicas=1,
    max_replicas=10,
    target_batch=48,
    downscale_delay_s=300,
    slo=SloParams(
        ttft_p90_s=2.0,
        tpot_p90_s=0.05,
        kv_cache_target=0.8,
        replica_start_s=240,
        max_lookahead_factor=2.0,
        trend_half_life_s=30,
        downscale_headroom=0.8,
        scale_to_zero_idle_s=600,
    ),
)


def _busy(running: float, **kw: float) -> ReplicaSignals:
    return ReplicaSignals(running=running, **kw)


IDLE = PolicyState()
# An objective of 250 tokens/s a sequence (4 ms): what the 8-sequence replicas below deliver, so all of their
# tokens are needed ones.
TIGHT = replace(P, slo=replace(P.slo, tpot_p90_s=0.004))


def _tick(replicas, target, now, state=IDLE, queued=0.0, ongoing=None, params=P):
    if ongoing is None:
        ongoing = queued + sum(r.running + r.waiting for r in replicas)
    return decide(replicas, queued=queued, ongoing=ongoing, target=target, now=now, state=state, params=params)


def _steady(replicas, target, start, seconds, state=IDLE, params=P, step=1.0):
    """Ticks every ``step`` seconds under constant load; returns the decisions."""
    out = []
    t = start
    while t <= start + seconds + 1e-9:
        d = _tick(replicas, target, t, state, params=params)
        out.append(d)
        state, target = d.state, d.replicas
        t += step
    return out


# --- fill -------------------------------------------------------------------------------------------


def test_fill_is_the_largest_signal():
    assert replica_fill(_busy(24), P) == (0.5, "sequences")
    assert replica_fill(_busy(24, waiting=24), P) == (1.0, "sequences")
    assert replica_fill(_busy(8, kv_cache_usage=0.8), P) == (1.0, "kv")  # 8 long prompts: full
    assert replica_fill(_busy(8, ttft_p90_s=3.0), P) == (1.5, "ttft")
    assert replica_fill(_busy(8, tpot_p90_s=0.1), P) == (2.0, "tpot")


def test_one_replica_counts_at_most_fill_cap_replicas():
    # 256 sequences waiting on one replica (a 32-prompt x n 8 batch): only that replica can serve them.
    assert replica_fill(_busy(48, waiting=208), P) == (FILL_CAP, "sequences")
    assert replica_fill(_busy(8, ttft_p90_s=60.0), P) == (FILL_CAP, "ttft")


def test_one_request_of_many_sequences_does_not_scale_the_fleet():
    """The largest request the B300 config admits (32 prompts x n 8 = 256 sequences) lands on one replica
    and holds it for minutes, its KV cache full and TTFT past the objective: at most the replicas a burst
    of FILL_CAP batches of ordinary requests would get (FILL_CAP x max_lookahead_factor), not max_replicas.
    Before the cap: 13 of 32."""
    params = replace(P, max_replicas=32, target_batch=48)
    held = _busy(64, waiting=192, kv_cache_usage=0.95, ttft_p90_s=30.0, tpot_p90_s=0.08, tokens_per_s=900.0)
    state, target, peak = IDLE, 1, 1
    for t in range(900):
        fleet = [ReplicaSignals()] * target if t < 120 else [held] + [ReplicaSignals()] * (target - 1)
        d = _tick(fleet, target, float(t), state, ongoing=0 if t < 120 else 1, params=params)
        state, target, peak = d.state, d.replicas, max(peak, d.replicas)
    assert 2 <= peak <= FILL_CAP * params.slo.max_lookahead_factor


def test_latency_of_an_idle_replica_is_ignored():
    # The window's p90 outlives the requests; an empty replica is not over capacity.
    assert replica_fill(ReplicaSignals(ttft_p90_s=10.0, tpot_p90_s=1.0), P) == (0.0, "sequences")


def test_needed_sums_fills_and_handle_queue():
    needed, signal = load_needed([_busy(24), _busy(48)], queued=48, ongoing=0, p=P)
    assert needed == pytest.approx(2.5) and signal == "sequences"
    needed, signal = load_needed([_busy(0), _busy(0)], queued=96, ongoing=96, p=P)
    assert needed == pytest.approx(2.0) and signal == "queue"


def test_serve_ongoing_count_is_a_floor_for_unreported_replicas():
    needed, _ = load_needed([ReplicaSignals(), ReplicaSignals()], queued=0, ongoing=96, p=P)
    assert needed == pytest.approx(2.0)


def test_service_rate_is_littles_law_at_the_target_batch():
    # 2 replicas, 24 running each, 4 req/s each: 1/6 req/s per sequence -> 8 req/s at a batch of 48.
    replicas = [_busy(24, finished_per_s=4.0), _busy(24, finished_per_s=4.0), _busy(0)]
    assert service_rate(replicas, P) == pytest.approx(8.0)
    assert service_rate([_busy(5)], P) is None  # nothing finished yet: unknown


def test_flow_sizes_for_arrivals_not_for_the_backlog():
    # One saturated replica finishing 6 req/s at 48 running; the queue grows by 18/s: arrivals 24/s.
    replicas = [_busy(48, waiting=16, finished_per_s=6.0)]
    flow = flow_needed(replicas, queued=1200, growth_per_s=18.0, p=P)
    assert flow == pytest.approx(24 / 6 + 1200 / (6 * P.slo.queue_drain_s))  # 4 + 1.67
    assert flow_needed([_busy(4)], queued=0, growth_per_s=0, p=P) is None


def test_a_backlog_counts_in_full_and_the_flow_on_top():
    replicas = [_busy(48, waiting=16, finished_per_s=6.0)]
    d = _tick(replicas, target=1, now=0.0, queued=120, ongoing=150)  # handles' count lags the replicas'
    assert d.needed == pytest.approx((64 + 120) / 48)  # one target batch per 48 requests: what the load holds now
    assert d.replicas == 4 and d.reason == "up:queue"
    # A queue that grows 18/s: arrivals 24/s at 6/s per replica, plus the backlog drained in queue_drain_s.
    state = replace(IDLE, at_s=-1.0, demand=184.0, growth_per_s=18.0)
    d = _tick(replicas, target=1, now=0.0, queued=120, ongoing=184, state=state)
    assert d.projected >= 24 / 6 + 120 / (6 * P.slo.queue_drain_s)


def test_a_rising_arrival_rate_is_provisioned_a_replica_start_ahead():
    replicas = [_busy(24, finished_per_s=4.0)]  # 8 req/s per replica at the target batch
    steady = flow_needed(replicas, queued=0, growth_per_s=0.0, p=P)
    assert steady == pytest.approx(0.5)
    band = 0.25 * 8.0 / P.slo.replica_start_s  # a quarter replica per start: the rate's wander
    assert flow_needed(replicas, 0, 0.0, P, arrival_growth_per_s2=band) == pytest.approx(steady)
    # 0.01 req/s per second for 240 s: 2.4 req/s more by the time a replica asked for now is up.
    assert flow_needed(replicas, 0, 0.0, P, arrival_growth_per_s2=0.01) == pytest.approx((4 + 2.4) / 8)
    assert flow_needed(replicas, 0, 0.0, P, arrival_growth_per_s2=1.0) == pytest.approx(1.0)  # lookahead cap


def test_a_replica_near_its_decode_objective_sizes_the_batch():
    assert slo_batch([_busy(30, tpot_p90_s=0.01)], P) == 48  # far under the objective: the configured target
    assert slo_batch([_busy(30, tpot_p90_s=0.05)], P) == pytest.approx(30)  # at it: what it runs
    assert slo_batch([_busy(20, tpot_p90_s=0.1)], P) == pytest.approx(10)  # over it: fewer
    assert slo_batch([_busy(2, tpot_p90_s=0.5)], P) == 48  # too few sequences to measure
    # Weighted by what each replica runs: (30 x 30 + 10 x 5) / 40.
    both = [_busy(30, tpot_p90_s=0.05), _busy(10, tpot_p90_s=0.1)]
    assert slo_batch(both, P) == pytest.approx((30 * 30 + 10 * 5) / 40)


def test_a_replica_over_its_decode_objective_is_full_below_the_target_batch():
    # 30 sequences, 20% over the per-token objective: full at 25, so 1.2 replicas' worth, and one more asked.
    d = _tick([_busy(30, tpot_p90_s=0.06)], target=1, now=0.0)
    assert d.needed == pytest.approx(1.2) and d.replicas == 2 and d.reason == "up:tpot"


def test_signals_from_report_maps_the_engine_report():
    from contracts.engine_report import BlockGeometry, ReplicaReport

    counters = dict.fromkeys(
        ("kv_tokens_in_use", "kv_capacity_tokens", "ongoing_requests", "engine_unfinished_requests"), 0.0
    )
    totals = {k: 0.0 for k in ReplicaReport.__dataclass_fields__ if k.endswith("_total")}
    report = ReplicaReport(
        geometry=BlockGeometry.uniform(16),
        num_running=3,
        num_waiting=2,
        kv_cache_usage=0.4,
        generation_tokens_per_s=100,
        finished_requests_per_s=2.0,
        ttft_p90_s=0.5,
        recent_acceptance_length=5.5,
        **counters,
        **totals,
    )
    assert signals_from_report(report) == ReplicaSignals(3, 2, 0.4, 0.5, None, 100, 2.0, 5.5)
    assert signals_from_report(None) == ReplicaSignals()


def test_projection_follows_a_surge_and_is_capped():
    noise = P.target_batch / P.slo.replica_start_s  # 0.2/s: one target batch per replica start
    assert project(2.0, demand=96, growth_per_s=0.0, p=P) == 2.0
    assert project(2.0, demand=96, growth_per_s=-1.0, p=P) == 2.0  # falling load never projects lower
    assert project(2.0, demand=96, growth_per_s=noise, p=P) == 2.0  # a wandering slope is not a trend
    assert project(2.0, demand=96, growth_per_s=noise + 0.1, p=P) == pytest.approx(2.0 * (96 + 24) / 96)
    assert project(2.0, demand=96, growth_per_s=10.0, p=P) == pytest.approx(4.0)  # max_lookahead_factor


def test_capacity_is_learned_near_the_target_batch_only():
    small = [_busy(8, tokens_per_s=3000)]  # fast per sequence at a small batch: says nothing about 48
    assert learn_capacity(small, IDLE, P) == IDLE
    full = [_busy(48, tokens_per_s=8000), _busy(40, tokens_per_s=7000)]
    learned = learn_capacity(full, IDLE, P).capacity_tps
    assert learned == pytest.approx((8000 + 7000 * 48 / 40) / 2)
    state = replace(IDLE, capacity_tps=learned)
    # 16 replicas at small batches deliver 32k tokens/s: 4 replicas' worth at the target batch, not 16 x 8/48.
    many = [_busy(8, tokens_per_s=2000)] * 16
    assert token_needed(many, state, TIGHT) == pytest.approx(32000 / learned)
    assert token_needed(many, IDLE, TIGHT) == 0.0


def test_speed_beyond_the_objective_is_not_needed():
    """P's objective is 20 tokens/s a sequence: 8 sequences need 160 of the 2,000 tokens/s they get."""
    state = replace(IDLE, capacity_tps=8000.0)
    many = [_busy(8, tokens_per_s=2000)] * 16
    assert token_needed(many, state, P) == pytest.approx(16 * 8 * 20 / 8000)
    slow = [_busy(8, tokens_per_s=100)] * 16  # slower than the objective: all of it is needed
    assert token_needed(slow, state, P) == pytest.approx(1600 / 8000)


def test_capacity_divides_the_windows_tokens_by_the_windows_batch():
    """A replica a burst has just filled: 48 running now, 8 over the window its tokens/s covers."""
    filled = [_busy(48, tokens_per_s=1000, recent_running=8)]
    assert learn_capacity(filled, IDLE, P) == IDLE  # not yet measured near the target batch
    settled = [_busy(48, tokens_per_s=8000, recent_running=48)]
    assert learn_capacity(settled, IDLE, P).capacity_tps == pytest.approx(8000)


def test_capacity_follows_the_acceptance_length():
    # Learned at tau 6; the mix shifts to tau 3: the same tokens/s now take twice the steps.
    state = learn_capacity([_busy(48, tokens_per_s=6000, acceptance_length=6.0)], IDLE, P)
    assert state.capacity_tps == pytest.approx(1000.0)
    easy = [_busy(8, tokens_per_s=2000, acceptance_length=6.0)] * 4
    hard = [_busy(8, tokens_per_s=2000, acceptance_length=3.0)] * 4
    assert token_needed(easy, state, TIGHT) == pytest.approx(4 / 3)
    assert token_needed(hard, state, TIGHT) == pytest.approx(8 / 3)


def test_scale_down_keeps_the_replicas_the_tokens_need():
    state = replace(IDLE, capacity_tps=8000.0)
    many = [_busy(8, tokens_per_s=2000)] * 16  # fills say 16 x 8/48 = 2.7 replicas; tokens say 4
    out = _steady(many, target=16, start=0.0, seconds=400, state=state, params=TIGHT)
    assert min(d.replicas for d in out) == math.ceil(32000 / 8000 / P.slo.downscale_headroom)


def test_streams_far_faster_than_the_objective_leave_one_replica():
    """tests/e2e/test_autoscaling.py's quiet phase on CPU replicas: capacity learned in a burst that filled both
    replicas past their target batch of 4 (slow per sequence), then two streams at 76 tokens/s each against a
    2 s per-token objective. Their tokens/s is two replicas' worth of that capacity, and none of it is needed."""
    slo = SloParams(tpot_p90_s=2)
    cpu = PolicyParams(min_replicas=0, max_replicas=2, target_batch=4, downscale_delay_s=15, slo=slo)
    state = learn_capacity([_busy(8, tokens_per_s=150, recent_running=8)] * 2, IDLE, cpu)
    assert state.capacity_tps == pytest.approx(75)
    quiet = [_busy(1, tokens_per_s=76, finished_per_s=0.45, tpot_p90_s=0.013)] * 2
    out = _steady(quiet, target=2, start=0.0, seconds=30, state=state, params=cpu)
    assert out[-1].replicas == 1 and out[-1].reason == "hold"
    assert any(d.reason == "down:low-load" for d in out)


def test_downscale_delay_shrinks_with_the_excess():
    assert downscale_delay(keep=3, target=3, p=P) == 300
    assert downscale_delay(keep=1, target=2, p=P) == 150
    assert downscale_delay(keep=2, target=16, p=P) == 300 * MIN_DELAY_SHARE


def test_rising_queue_scales_up_before_replicas_are_full():
    state, target, t = IDLE, 2, 0.0
    d = None
    for running in range(20, 60, 4):  # each replica gains 4 requests every 10 s: still under target at first
        d = _tick([_busy(running), _busy(running)], target, t, state)
        state, target, t = d.state, d.replicas, t + 10
        if d.reason.startswith("up"):
            break
    assert d is not None and d.reason == "up:trend", d
    assert d.needed < 2  # the current load still fits: the trend asked


# --- scaling up -------------------------------------------------------------------------------------


def test_upscale_is_immediate_and_sized_to_the_load():
    d = _tick([_busy(48, waiting=48), _busy(48, waiting=48)], target=2, now=0.0)
    assert d.replicas == 4 and d.reason == "up:sequences"


def test_latency_miss_scales_up_even_at_low_counts():
    d = _tick([_busy(10, tpot_p90_s=0.08)], target=1, now=0.0)
    assert d.replicas == 2 and d.reason == "up:tpot"


def test_kv_pressure_scales_up():
    d = _tick([_busy(6, kv_cache_usage=0.95)], target=1, now=0.0)
    assert d.replicas == 2 and d.reason == "up:kv"


def test_upscale_respects_max_replicas():
    d = _tick([_busy(48, waiting=400)] * 10, target=10, now=0.0)
    assert d.replicas == 10 and d.reason == "cap:max_replicas"
    d = _tick([_busy(48, waiting=400)] * 8, target=8, now=0.0)
    assert d.replicas == 10


def test_replicas_starting_count_toward_the_target():
    # Serve's target already includes replicas still starting: a load that 3 replicas carry needs no 4th.
    d = _tick([_busy(48), _busy(48), _busy(0)], target=3, now=0.0, queued=0)
    assert d.replicas == 3 and d.reason == "hold"


# --- scaling down -----------------------------------------------------------------------------------


def test_downscale_waits_for_the_delay_with_headroom():
    load = [_busy(10)] * 4  # 40 requests: one replica at 0.83 fill, two with headroom
    out = _steady(load, target=4, start=0.0, seconds=400)
    changes = [(i, d) for i, d in enumerate(out) if d.replicas != 4]
    assert changes, "never scaled down"
    first, d = changes[0]
    assert first == 150  # downscale_delay_s x 2/4 (the share that stays), 1 s ticks
    assert d.reason == "down:low-load"
    assert d.replicas == math.ceil(40 / 48 / 0.8)  # 2: the rest run at most downscale_headroom


def test_downscale_never_goes_below_what_the_load_needs():
    for running in (0, 1, 10, 30, 47, 48, 60, 100):
        load = [_busy(running)] * 5
        for d in _steady(load, target=5, start=0.0, seconds=700, step=5.0):
            assert d.replicas >= min(P.max_replicas, math.ceil(d.needed - 1e-9)), (running, d)
            assert d.replicas >= P.min_replicas


def test_hysteresis_no_flapping_around_the_threshold():
    # Load oscillating around what 2 replicas carry at the headroom: the target must not flap.
    state, target, replicas_seen = PolicyState(), 3, []
    for i in range(2000):
        running = 38 if i % 20 < 10 else 40  # 76..80 requests over 2 replicas: fills 0.79..0.83
        d = _tick([_busy(running), _busy(running), _busy(0)], target, float(i), state)
        state, target = d.state, d.replicas
        replicas_seen.append(target)
    changes = sum(1 for a, b in itertools.pairwise(replicas_seen) if a != b)
    assert changes <= 1


def test_a_burst_in_the_window_resets_the_downscale_clock():
    load_low = [_busy(20)] * 4  # 80 requests: 2 replicas at 0.83 fill -> 3 stay, delay 300 x 3/4 = 225 s
    out = _steady(load_low, target=4, start=0.0, seconds=200)
    assert all(d.replicas == 4 for d in out)
    burst = _tick([_busy(40)] * 4, 4, 201.0, out[-1].state)
    assert burst.replicas >= 4 and burst.state.low_since_s is None
    after = _steady(load_low, target=burst.replicas, start=202.0, seconds=400)
    first_down = next(i for i, d in enumerate(after) if d.replicas < burst.replicas)
    assert first_down >= 225  # the clock restarted at 202, not at 0


def test_no_trend_upscale_while_a_downscale_settles():
    # 8 -> 4 replicas: in-flight counts climb as the same arrivals run in bigger batches; not a surge.
    state = replace(IDLE, at_s=0.0, demand=100.0, down_at_s=0.0)
    for t in range(1, 60):
        d = _tick([_busy(25 + t * 0.3)] * 4, 4, float(t), state)
        state = d.state
        assert d.replicas == 4, (t, d)


def test_min_replicas_floor_is_restored():
    d = _tick([], target=0, now=0.0, params=replace(P, min_replicas=2))
    assert d.replicas == 2 and d.reason == "floor:min_replicas"


# --- scale to zero ----------------------------------------------------------------------------------


def test_scale_to_zero_only_after_idle_time_and_only_when_allowed():
    zero = replace(P, min_replicas=0)
    out = _steady([ReplicaSignals()], target=1, start=0.0, seconds=700, params=zero, step=10.0)
    first_zero = next(i for i, d in enumerate(out) if d.replicas == 0)
    assert first_zero * 10.0 == 600 and out[first_zero].reason == "down:idle"
    # min_replicas 1 never goes to zero
    out = _steady([ReplicaSignals()], target=1, start=0.0, seconds=2000, step=10.0)
    assert all(d.replicas == 1 for d in out)


def test_a_request_resets_the_idle_clock():
    zero = replace(P, min_replicas=0)
    out = _steady([ReplicaSignals()], target=1, start=0.0, seconds=500, params=zero, step=10.0)
    busy = _tick([_busy(1)], 1, 510.0, out[-1].state, params=zero)
    assert busy.replicas == 1 and busy.state.idle_since_s is None
    after = _steady([ReplicaSignals()], target=1, start=520.0, seconds=500, params=zero, step=10.0)
    assert all(d.replicas == 1 for d in after)


def test_no_idle_clock_while_replicas_are_still_starting():
    zero = replace(P, min_replicas=0)
    out = _steady([], target=1, start=0.0, seconds=2000, params=zero, step=10.0)  # deploying, nothing up yet
    assert all(d.replicas == 1 for d in out)


def test_a_scale_down_restarts_the_idle_clock():
    # 2 -> 1 with nothing left on the staying replica: the leaver's requests are invisible, so the
    # last replica must wait the whole idle time again before it goes.
    zero = replace(P, min_replicas=0, downscale_delay_s=10)
    out = _steady([ReplicaSignals(), ReplicaSignals()], target=2, start=0.0, seconds=30, params=zero)
    down = next(d for d in out if d.replicas == 1)
    assert down.state.idle_since_s is None
    later = _steady([ReplicaSignals()], target=1, start=down.state.down_at_s + 1, seconds=700, params=zero)
    first_zero = next(i for i, d in enumerate(later) if d.replicas == 0)
    assert first_zero >= P.slo.scale_to_zero_idle_s - 1


def test_from_zero_a_queued_request_asks_for_a_replica():
    zero = replace(P, min_replicas=0)
    d = _tick([], target=0, now=0.0, queued=1, params=zero)
    assert d.replicas == 1 and d.reason.startswith("up")


# --- state ------------------------------------------------------------------------------------------


def test_state_round_trips_through_a_dict():
    s = PolicyState(at_s=1.0, demand=3.0, growth_per_s=0.5, low_since_s=2.0, idle_since_s=None)
    assert PolicyState.from_dict(s.to_dict()) == s
    assert PolicyState.from_dict({}) == PolicyState()
    assert PolicyState.from_dict({"demand": 1.0, "someone_elses_key": 7}) == PolicyState(demand=1.0)
