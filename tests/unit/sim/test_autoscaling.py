"""The autoscaling simulator: Serve's controller semantics on the simulated clock, and a small end-to-end run."""

from __future__ import annotations

import math

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig

from sim.autoscaling.__main__ import summarize
from sim.autoscaling.arms import arms, benchmark_model, slo_of
from sim.autoscaling.cluster import AutoscaledCluster, ClusterConfig
from sim.autoscaling.serve_loop import ServeLoop
from sim.autoscaling.traces import arrivals, bursty, diurnal


def _tick(loop: ServeLoop, now: float, target: int, ongoing: float) -> int:
    running = [f"r{i}" for i in range(target)]
    return loop.tick(
        now=now, target=target, running=running, total_num_requests=ongoing, total_queued_requests=0, metrics={}
    )


def test_serve_loop_applies_serve_delays_on_the_simulated_clock():
    cfg = AutoscalingConfig(
        min_replicas=1, max_replicas=8, target_ongoing_requests=10, upscale_delay_s=30, downscale_delay_s=300
    )
    loop = ServeLoop(replica_queue_length_autoscaling_policy, cfg)
    assert _tick(loop, 0.0, 1, ongoing=40) == 1  # wants 4, waits upscale_delay_s
    assert _tick(loop, 29.0, 1, ongoing=40) == 1
    assert _tick(loop, 30.0, 1, ongoing=40) == 4
    assert _tick(loop, 31.0, 4, ongoing=5) == 4  # wants 1, waits downscale_delay_s
    assert _tick(loop, 331.0, 4, ongoing=5) == 1
    assert _tick(loop, 332.0, 1, ongoing=1000) == 1  # bounded by max_replicas only after the delay
    assert _tick(loop, 362.0, 1, ongoing=1000) == 8


def test_serve_loop_cold_start_bypasses_delays():
    cfg = AutoscalingConfig(min_replicas=0, max_replicas=4, target_ongoing_requests=10, upscale_delay_s=30)
    loop = ServeLoop(replica_queue_length_autoscaling_policy, cfg)
    assert _tick(loop, 0.0, 0, ongoing=1) == 1


def test_traces_follow_their_rates():
    import random

    burst = bursty(quiet_rps=1.0, factor=10, quiet_s=600, burst_s=600)
    times = arrivals(burst, random.Random(0))
    quiet = sum(1 for t in times if t < 600)
    peak = sum(1 for t in times if 660 <= t < 1200)
    assert 500 < quiet < 700 and 4900 < peak < 5900
    day = diurnal(low_rps=1, high_rps=5, period_s=3600)
    assert day.rate(0) == 1 and math.isclose(day.rate(1800), 5)


def test_small_run_scales_up_and_back_and_drops_nothing():
    model = benchmark_model(max_replicas=4)
    ttft_s, tpot_s = slo_of(model)
    trace = bursty(quiet_rps=0.5, factor=10, quiet_s=300, burst_s=300)
    config = ClusterConfig(start_s_range=(60.0, 90.0))
    for arm in arms(model)[:2]:  # ours and one default
        run = AutoscaledCluster(trace, arm.loop(), config).run()
        row = summarize(run, trace, ttft_s, tpot_s)
        targets = [t for _, t, _, _ in run.timeline]
        assert all(1 <= t <= 4 for t in targets), arm.name
        assert max(targets) > 1 and targets[-1] < max(targets), arm.name  # up for the burst, down after
        assert row["dropped_at_downscale"] == 0
        assert all(math.isfinite(j.done_s) for j in run.jobs)
        # Both objectives met is at most each one met; one replica all along < what it paid < four all along.
        assert row["slo_attainment"] <= min(row["ttft_ok"], row["tpot_ok"]), arm.name
        one_replica_h = trace.duration_s / 3600
        assert one_replica_h < row["replica_hours"] < 4 * one_replica_h, arm.name


def test_pareto_front_keeps_only_undominated_points_cheapest_first():
    from sim.autoscaling.__main__ import dominated_by, pareto_front

    points = {
        "cheap-bad": (0.50, 1.0),
        "mid": (0.90, 2.0),
        "dominated": (0.85, 2.5),  # worse and dearer than mid
        "tie-a": (0.99, 3.0),
        "tie-b": (0.99, 3.0),  # equal points both stay
        "dear-same": (0.99, 4.0),  # same attainment, dearer: dominated
    }
    assert pareto_front(points) == ["cheap-bad", "mid", "tie-a", "tie-b"]
    assert dominated_by("dominated", points) == ["mid"]
    assert dominated_by("mid", points) == []


def test_best_tuned_takes_the_cheapest_within_tolerance_of_the_top():
    from sim.autoscaling.__main__ import best_tuned

    points = {"top": (0.950, 9.0), "close": (0.947, 6.0), "far": (0.90, 1.0)}
    assert best_tuned(points, tolerance=0.005) == "close"
    assert best_tuned(points, tolerance=0.0) == "top"


def test_static_sizes_from_p95_and_peak_rate():
    from sim.autoscaling.arms import static_arm, static_sizes

    day = diurnal(low_rps=1, high_rps=20, period_s=3600)
    # p95 of 1 + 19 (1 - cos) / 2 is ~19.9 req/s, the peak 20: both need 4 replicas of 6 req/s, 5 of 4.5
    assert static_sizes(day, replica_rps=6.0) == {4: ["p95", "peak"], 5: ["peak+1"]}
    # quiet 80% of the time: p95 is the burst's rate only when the burst lasts more than 5% of the trace
    burst = bursty(quiet_rps=2.5, factor=10, quiet_s=1800, burst_s=60)
    assert static_sizes(burst, replica_rps=6.0) == {1: ["p95"], 5: ["peak"], 6: ["peak+1"]}
    arm = static_arm(5, ["peak"])
    assert (
        arm.static_replicas == 5
        and arm.loop().tick(
            now=0.0, target=1, running=[], total_num_requests=1e6, total_queued_requests=1e6, metrics={}
        )
        == 5
    )


def test_grid_covers_the_shipped_settings_and_serve_knobs():
    from sim.autoscaling.arms import SHIPPED, grid_arms

    grid = grid_arms(benchmark_model())
    names = {a.name for a in grid}
    assert set(SHIPPED) <= names and len(names) == len(grid) == 16
    for arm in grid:  # every point is a valid Serve config (loop() builds AutoscalingConfig)
        cfg = arm.loop()._config  # type: ignore[union-attr]
        assert cfg.get_downscaling_factor() in (1.0, 0.3)
        assert cfg.get_upscaling_factor() in (1.0, 2.0)
    assert {a.serve_config.get("upscaling_factor") for a in grid} == {None, 2.0}
