"""The replica's recent-latency window (what the autoscaler reads) fed with vLLM's own stats objects."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from deployments.engine.replica_stats import RecentLatency, ReplicaStats, ReplicaStatsLogger, p90


def test_p90_nearest_rank():
    assert p90([1.0]) == 1.0
    assert p90([float(i) for i in range(1, 11)]) == 9.0
    assert p90([float(i) for i in range(1, 101)]) == 90.0


def test_window_forgets_old_samples_and_rates_tokens():
    w = RecentLatency(window_s=10)
    w.add(0.0, [5.0], [0.5], 100, 1, running=0)
    w.add(8.0, [0.1, 0.2], [0.01], 50, 2, running=0)
    snap = w.snapshot(9.0)
    assert snap["ttft_p90_s"] == 5.0 and snap["tpot_p90_s"] == 0.5
    assert snap["generation_tokens_per_s"] == pytest.approx(15.0)
    assert snap["finished_requests_per_s"] == pytest.approx(0.3)
    snap = w.snapshot(10.5)  # the first tick left the window
    assert snap["ttft_p90_s"] == 0.2 and snap["tpot_p90_s"] == 0.01
    assert snap["generation_tokens_per_s"] == pytest.approx(5.0)
    assert snap["finished_requests_per_s"] == pytest.approx(0.2)
    assert "recent_acceptance_length" not in snap  # AR: no drafts
    w.add_drafts(10.0, drafts=4, accepted=20)
    assert w.snapshot(10.5)["recent_acceptance_length"] == pytest.approx(6.0)
    # no samples: rates 0, no latency keys
    assert w.snapshot(100.0) == {"generation_tokens_per_s": 0.0, "finished_requests_per_s": 0.0, "recent_running": 0.0}


def test_window_batch_is_weighted_by_time_and_ignores_idle_gaps():
    """A burst that has just filled a replica shows in its last step, not yet in its window's batch."""
    w = RecentLatency(window_s=10)
    w.add(0.0, [], [], 0, 0, running=1)
    w.add(4.0, [], [], 4, 0, running=0)  # one sequence for 4 s, then idle
    w.add(9.0, [], [], 0, 0, running=8)  # a burst arrives after 5 idle seconds
    w.add(10.0, [], [], 8, 0, running=8)  # eight sequences for 1 s
    assert w.snapshot(10.0)["recent_running"] == pytest.approx((1 * 4 + 8 * 1) / 10)
    assert w.snapshot(14.5)["recent_running"] == pytest.approx(8 / 10)  # the first 4 s left the window


def test_logger_reads_vllm_iteration_stats():
    from vllm.v1.engine import FinishReason
    from vllm.v1.metrics.stats import FinishedRequestStats, IterationStats

    stats, recent = ReplicaStats(), RecentLatency(window_s=60)
    cache = SimpleNamespace(num_gpu_blocks=10, block_size=16)
    log = ReplicaStatsLogger.factory(stats, recent, threading.Lock())(SimpleNamespace(cache_config=cache))
    it = IterationStats()
    it.num_generation_tokens = 7
    it.time_to_first_tokens_iter = [0.25, 0.75]
    it.finished_requests = [
        FinishedRequestStats(FinishReason.LENGTH, num_generation_tokens=10, mean_time_per_output_token=0.02),
        FinishedRequestStats(FinishReason.STOP, num_generation_tokens=1, mean_time_per_output_token=0.0),
    ]
    log.record(None, it)
    snap = recent.snapshot(time.monotonic())
    assert snap["ttft_p90_s"] == 0.75
    assert snap["tpot_p90_s"] == 0.02  # a one-token request has no time per output token
    assert snap["finished_requests_per_s"] == pytest.approx(2 / 60)
    assert stats.generation_tokens_total == 7


def test_the_engines_record_fits_the_report_contract_and_survives_the_wire():
    from contracts.engine_report import BlockGeometry, ReplicaReport
    from deployments.engine.replica_stats import build_report

    stats, recent = ReplicaStats(num_waiting=3, kv_cache_usage=0.5, spec_drafts_total=4), RecentLatency(30)
    stats.spec_accepted_tokens_total = 6
    recent.add(1.0, [0.2], [0.01], tokens=5, finished=1, running=2)
    report = build_report(stats, recent.snapshot(1.0), BlockGeometry(32, 64, 64), 2, 1)
    assert report.acceptance_length == pytest.approx(2.5)
    assert report.ttft_p90_s == 0.2 and report.recent_acceptance_length is None
    assert ReplicaReport.from_wire(report.to_wire()) == report
