"""The real-engine routing benchmark's bookkeeping: peer command lines, and tuned-vs-held-out selection."""

from __future__ import annotations

import json
import subprocess

import pytest

from bench.peer_routers import PEER_ARMS, PeerArm
from bench.routing_real import report, republish, summarize
from bench.routing_workloads import TUNING_WORKLOADS
from bench.vllm_server import CacheCounters


def test_every_family_lists_its_shipped_default_first_and_knobs_only_after():
    seen: set[str] = set()
    for arm in PEER_ARMS:
        if arm.family not in seen:
            assert arm.knobs == (), f"{arm.family}'s first arm must be its shipped default"
            seen.add(arm.family)
    assert len({a.name for a in PEER_ARMS}) == len(PEER_ARMS)


def test_default_arms_pass_no_knobs_and_kv_arms_their_sources():
    default = PeerArm("smg", "cache_aware").argv(9000, ["http://a", "http://b"])
    assert default[1:] == [
        "launch",
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--worker-urls",
        "http://a",
        "http://b",
        "--policy",
        "cache_aware",
    ]
    kv = PeerArm("vllm-router", "kv_aware", kv_events=True).argv(
        9000, ["http://a"], ("http://a=tcp://127.0.0.1:1",), block_size=32, model="m"
    )
    assert kv[kv.index("--kv-event-source") + 1] == "http://a=tcp://127.0.0.1:1"
    assert kv[kv.index("--kv-event-block-size") + 1] == "32"
    assert kv[kv.index("--kv-event-model") + 1] == "m"
    with pytest.raises(ValueError):
        PeerArm("nginx", "round_robin").argv(9000, [])


@pytest.mark.parametrize("arm", [a for a in PEER_ARMS if a.knobs], ids=lambda a: a.name)
def test_every_tuned_knob_is_a_flag_the_installed_router_accepts(arm: PeerArm):
    argv = arm.argv(9000, ["http://a"], block_size=32, model="m")
    # `--help` after the flags: argparse rejects an unknown flag before it prints help (make test installs
    # the routers: pyproject's `peers` extra).
    done = subprocess.run([*argv, "--help"], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-500:]


def _runs(hit_rates: dict[int, float]) -> dict[str, dict]:
    cell = {"hit_rate": 0.0, "ttft_p50_s": 1.0, "ttft_p90_s": 2.0, "requests_per_s": 3.0}
    return {str(s): {w: cell | {"hit_rate": h} for w in TUNING_WORKLOADS} for s, h in hit_rates.items()}


def test_tuned_point_is_picked_on_the_tuning_seeds_and_scored_on_the_held_out_ones():
    runs = {
        "x": _runs({0: 0.40, 1: 0.50, 2: 0.52}),
        "x[k=1]": _runs({0: 0.45, 1: 0.30, 2: 0.32}),  # best on seed 0, worse held out: still the tuned pick
        "x[k=2]": _runs({0: 0.10}),  # lost the tuning round, never run held out
    }
    families = {name: "x" for name in runs}
    summary = summarize(runs, families, tuning=[0], held_out=[1, 2])["x"]
    assert (summary["default"], summary["tuned"]) == ("x", "x[k=1]")
    held = summary["held_out"]["tuned"]["shared_prefix"]["hit_rate"]
    # Two seeds: mean 0.31, t(1) = 12.706 x sd 0.01414 / sqrt 2 = 0.127 half-width.
    assert held["mean"] == pytest.approx(0.31) and held["hi"] - held["mean"] == pytest.approx(0.127, abs=1e-3)
    assert summary["held_out"]["default"]["multi_turn"]["hit_rate"]["mean"] == pytest.approx(0.51)
    table = report({"x": summary})
    assert "| x | tuned `[k=1]` | 31.0% ± 12.7% |" in table and "| x | default | 51.0% ± 12.7% |" in table


def test_a_held_out_workload_counts_only_where_every_held_out_seed_ran_it():
    runs = {"x": _runs({0: 0.4, 1: 0.5, 2: 0.5})}
    runs["x"]["1"]["sharegpt"] = runs["x"]["1"]["shared_prefix"]  # seed 2 has not run it yet
    held = summarize(runs, {"x": "x"}, tuning=[0], held_out=[1, 2])["x"]["held_out"]["default"]
    assert "sharegpt" not in held and "shared_prefix" in held
    runs["x"]["2"]["sharegpt"] = runs["x"]["2"]["shared_prefix"]
    held = summarize(runs, {"x": "x"}, tuning=[0], held_out=[1, 2])["x"]["held_out"]["default"]
    assert held["sharegpt"]["hit_rate"]["mean"] == pytest.approx(0.5)


def test_report_only_renders_the_saved_runs_tables_and_plot(tmp_path, capsys: pytest.CaptureFixture[str]):
    """--report-only: the saved runs, summarized again, give the tables (throughput included) and the PNG."""
    runs = {"smg/round_robin": _runs({0: 0.4, 1: 0.5, 2: 0.5}), "unknown-arm": _runs({0: 0.9, 1: 0.9, 2: 0.9})}
    out = tmp_path / "routing_real"
    out.with_suffix(".json").write_text(json.dumps({"runs": runs, "tuning_seeds": [0], "held_out_seeds": [1, 2]}))
    republish(out)
    printed = capsys.readouterr().out
    assert "| smg/round_robin | default (= tuned) | 50.0% ± 0.0% | 50.0% ± 0.0% |" in printed
    assert "unknown-arm" not in printed
    assert "Throughput (requests/s" in printed and "| smg/round_robin | default (= tuned) | 3.00 ± 0.00 |" in printed
    assert out.with_suffix(".png").stat().st_size > 0


def test_counter_deltas():
    assert CacheCounters(10, 4, 12) - CacheCounters(4, 1, 2) == CacheCounters(6, 3, 10)
