"""The routing simulator: calibration, the KV cache model, conservation, determinism, bounds, baselines."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from routing.events import BlocksRemoved, BlocksStored
from routing.policies import PrefixPolicyConfig
from routing.policy import ReplicaLoad, RouteRequest
from sim.routing.baselines import (
    RayPrefixConfig,
    RayPrefixPolicy,
    SglangCacheAwareConfig,
    SglangCacheAwarePolicy,
)
from sim.routing.cluster import SimConfig, Simulation, _events
from sim.routing.engine import EngineModel, fit_dflash_cost
from sim.routing.kv_cache import KvCache
from sim.routing.report import compared, saturation_point, tune
from sim.routing.sweep import INDEX_HEADROOM, POLICY_SPECS, shared_prefix_workload
from sim.routing.workloads import multi_turn, shared_prefix
from sim.seed_table import SeedCell

ENGINE = EngineModel(kv_blocks=512)
SPECS = {s.name: s for s in POLICY_SPECS}


def _run(workload, policy: str, replicas: int = 4, load: float = 0.9, seed: int = 0):
    spec = SPECS[policy]
    config = SimConfig(replicas=replicas, engine=ENGINE, load=load, precise=spec.precise, seed=seed)
    sim = Simulation(workload, spec.make(ENGINE, PrefixPolicyConfig()), config)
    return sim, sim.run()


@pytest.fixture(scope="module")
def groups():
    return shared_prefix_workload(1.0, 4, 600, ENGINE, seed=3)


def _cells(kappa: float, verify_s: float) -> list[SeedCell]:
    """A seed table that a known DFlash cost generated exactly, over several τ and AR speeds."""
    out = []
    for i, (c, ar_tps, tau) in enumerate(itertools.product((1, 8, 32), (250.0, 300.0), (4.0, 8.0))):
        spec_step = kappa * c / ar_tps + verify_s * c
        out.append(SeedCell(f"t{i}", c, ar_tps, c * tau / spec_step, tau))
    return out


@pytest.mark.parametrize(("kappa", "verify_s"), [(2.3, 0.0), (1.8, 1e-4), (3.0, 5e-5)])
def test_the_dflash_fit_recovers_the_cost_that_made_a_table(kappa, verify_s):
    fit = fit_dflash_cost(_cells(kappa, verify_s))
    assert fit.kappa == pytest.approx(kappa, rel=1e-9) and fit.verify_s == pytest.approx(verify_s, abs=1e-12)


def test_the_dflash_fit_never_charges_a_negative_cost_per_sequence():
    # Speedups that grow with the batch would want v < 0: the fit holds it at 0 and refits kappa alone.
    ar = {1: 250.0, 8: 1200.0, 32: 3000.0}
    cells = [SeedCell("t", c, ar[c], ar[c] * s, 6.0) for c, s in ((1, 2.0), (8, 2.6), (32, 3.2))]
    fit = fit_dflash_cost(cells)
    assert fit.verify_s == 0.0 and min(c.speedup for c in cells) < 6.0 / fit.kappa < max(c.speedup for c in cells)


def test_the_fitted_model_is_within_ten_percent_of_every_seed_cell():
    # What docs/routing-simulator.md's calibration table reports, per cell; a change to the engine model
    # that drifts from the seed table fails here.
    errors = {(f.task, f.concurrency): f.dflash_error for f in EngineModel().calibration()}
    assert len(errors) == 15 and max(abs(e) for e in errors.values()) < 0.10, errors


def test_kv_cache_pins_hits_evicts_tail_first_and_logs_in_order():
    kv = KvCache(6)
    kv.admit([], 4)
    assert kv.register([1, 2, 3]) == [1, 2, 3]
    kv.release([1, 2, 3], 1)  # prompt 1,2,3 cached; its output block freed
    assert kv.cached_prefix([1, 2, 3, 9], 10) == 3 and kv.usage() == 0
    kv.admit([1], 5)  # pin block 1, need 5: evicts 3 then 2 (the tail first)
    assert kv.cached_prefix([1, 2, 3], 10) == 1
    assert kv.drain_log() == [(True, 1), (True, 2), (True, 3), (False, 3), (False, 2)]
    assert kv.register([1, 7]) == [7]  # 1 is cached already: that block stays a private duplicate
    assert kv.free_blocks() == 0 and not kv.can_admit([], 1)


def test_consecutive_log_entries_become_one_event_each():
    log = [(True, 1), (True, 2), (False, 9), (True, 3)]
    assert _events("r", log) == [BlocksStored("r", (1, 2)), BlocksRemoved("r", (9,)), BlocksStored("r", (3,))]


def test_every_request_finishes_once(groups):
    sim, metrics = _run(groups, "prefix", load=1.4)
    assert len(sim.jobs) == groups.requests
    assert all(j.first_token_s <= j.done_s for j in sim.jobs)
    assert sum(sim.in_flight) == 0 and not any(r.running or r.waiting for r in sim.replicas)
    assert metrics.requests > 0


def test_multi_turn_sessions_run_their_turns_in_order():
    chats = multi_turn(12, 3, 64, 128, 32, 32, 0.2, ENGINE.tau_range, seed=1)
    sim, _ = _run(chats, "prefix")
    by_session: dict[int, list] = {}
    for job in sim.jobs:
        by_session.setdefault(job.session, []).append(job)
    for jobs in by_session.values():
        assert [j.turn_index for j in jobs] == [0, 1, 2]
        assert all(a.done_s <= b.arrival_s for a, b in itertools.pairwise(jobs))


def test_same_seed_same_results(groups):
    assert _run(groups, "prefix")[1] == _run(groups, "prefix")[1]
    assert _run(groups, "pow2", seed=1)[1] != _run(groups, "pow2", seed=2)[1]


def test_prefix_beats_round_robin_on_shared_prefixes(groups):
    assert _run(groups, "prefix")[1].hit_rate > 2 * _run(groups, "round_robin")[1].hit_rate


def test_saturation_is_where_round_robin_falls_behind_the_offered_load():
    def point(x, delivered):
        return {"x": x, "policies": {"round_robin": {"throughput_tps": delivered, "offered_tps": 100.0}}}

    assert saturation_point("load", [point(0.5, 99), point(1.0, 90), point(1.5, 80)])["x"] == 1.0
    assert saturation_point("load", [point(0.5, 99), point(1.0, 98)])["x"] == 1.0
    assert saturation_point("multi_turn", [point(0.5, 90), point(1.0, 80)])["x"] == 1.0  # closed loop: the top


def _loads(*in_flight: int) -> list[ReplicaLoad]:
    return [ReplicaLoad(f"r{i}", n, 64) for i, n in enumerate(in_flight)]


def test_ray_baseline_follows_the_longest_match_else_the_smallest_tree_else_pow2():
    ray = RayPrefixPolicy(lambda: 0.0, RayPrefixConfig(imbalanced_threshold=10))
    ray.on_routed(RouteRequest("a", (1, 2, 3, 4)), "r1")
    ray.on_routed(RouteRequest("b", (1, 2)), "r2")
    d = ray.choose(RouteRequest("c", (1, 2, 3, 4, 5)), _loads(0, 5, 0))
    assert (d.ranked[0], d.reason, d.matched_blocks) == (("r1",), "prefix", 4)
    d = ray.choose(RouteRequest("d", (7, 8)), _loads(0, 0, 0))
    assert (d.ranked[0], d.reason) == (("r0",), "cold")  # r0 has the smallest (empty) tree
    assert ray.choose(RouteRequest("e", (1, 2)), _loads(0, 11, 0)).reason == "imbalance"


def test_ray_baseline_at_rays_defaults_never_leaves_affinity_for_load():
    ray = RayPrefixPolicy(lambda: 0.0)  # imbalanced_threshold=inf, as ray 2.60 ships it
    ray.on_routed(RouteRequest("a", (1, 2, 3, 4)), "r1")
    assert ray.choose(RouteRequest("b", (1, 2, 3, 4)), _loads(0, 60, 0)).ranked[0] == ("r1",)


def test_ray_baseline_runs_rays_own_tree_on_exact_block_text():
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree

    from sim.routing.baselines.ray_prefix import CHARS_PER_BLOCK, block_text

    ray = RayPrefixPolicy(lambda: 0.0)
    assert isinstance(ray.tree, PrefixTree)
    hashes = (2**63 + 5, 2**40 + 7, 9)
    text = block_text(hashes)
    assert len(text) == CHARS_PER_BLOCK * 3 and block_text(hashes[:2]) == text[: 2 * CHARS_PER_BLOCK]
    assert block_text((2**63 + 5, 2**40 + 8)) != block_text(hashes[:2])


def test_ray_baseline_evicts_only_when_asked():
    now = [0.0]
    # Ray's budgets are characters of text (~64 per 16-token block): 3 and 2 blocks here.
    cfg = RayPrefixConfig(
        do_eviction=True, eviction_threshold_chars=192, eviction_target_chars=128, eviction_interval_s=1
    )
    ray = RayPrefixPolicy(lambda: now[0], cfg)
    ray.on_routed(RouteRequest("a", (1, 2, 3, 4)), "r0")
    assert ray.index_size() == 4
    now[0] = 2.0
    ray.on_routed(RouteRequest("b", (9,)), "r1")
    assert ray.tree.tenant_to_char_count["r0"] == 0  # Ray evicts a whole node at once: the one prompt
    now[0] = 2.5
    ray.on_routed(RouteRequest("c", (1, 2, 3, 4)), "r0")
    assert ray.index_size() == 5  # no eviction before the interval


DARK = SglangCacheAwareConfig(load_monitor_interval_s=None)  # engines without load reports: live in-flight counts


def test_sglang_baseline_spills_a_busy_holder_past_both_thresholds_and_evicts_by_size():
    now = [0.0]
    cfg = replace(DARK, balance_abs_threshold=4, balance_rel_threshold=2.0, eviction_interval_s=1, max_tree_blocks=1)
    sg = SglangCacheAwarePolicy(lambda: now[0], cfg)
    sg.on_routed(RouteRequest("a", (1, 2, 3)), "r2")
    req = RouteRequest("b", (1, 2, 3, 4))
    assert sg.choose(req, _loads(1, 1, 5)).ranked[0] == ("r2",)  # 5 > 2 x 2.3 but not > 2.3 + 4
    assert sg.choose(req, _loads(6, 9, 10)).ranked[0] == ("r2",)  # 10 > 8.3 + 4 but not > 2 x 8.3
    d = sg.choose(req, _loads(1, 3, 10))  # 10 > 2 x 4.7 and > 4.7 + 4
    assert (d.ranked[0], d.reason) == (("r0",), "spill")
    assert sg.choose(RouteRequest("c", (1, 8, 9, 10)), _loads(3, 2, 1)).reason == "cold"  # 1/4 <= 0.3
    now[0] = 5.0
    sg.on_routed(RouteRequest("d", (5,)), "r0")
    assert sg.tree.size("r2") == 1


def test_sglang_baseline_margin_is_capped_at_the_load_swing_and_the_least_loaded_holder_wins():
    sg = SglangCacheAwarePolicy(lambda: 0.0, DARK)  # the gateway's defaults otherwise: abs 64, rel 1.5
    sg.on_routed(RouteRequest("a", (1, 2, 3)), "r2")
    hot = RouteRequest("b", (1, 2, 3, 4))
    # The margin is max(4, ceil(2 sqrt(mean))), not 64: the 7th in flight at the holder spills, the 6th does not.
    assert sg.choose(hot, _loads(0, 0, 6)).reason == "prefix"
    assert sg.choose(hot, _loads(0, 0, 7)).reason == "spill"
    assert sg.choose(hot, _loads(2, 2, 9)).reason == "prefix"  # mean 4.3: margin ceil(4.2) = 5
    assert sg.choose(hot, _loads(2, 2, 10)).reason == "spill"
    # Two holders of the deepest match: the least loaded wins, however recently the other was used.
    sg.on_routed(RouteRequest("c", (1, 2, 3)), "r0")
    assert sg.choose(hot, _loads(3, 0, 1)).ranked[0] == ("r2",)


def test_sglang_baseline_leaves_out_overloaded_workers_and_routes_around_itself_when_all_are():
    """The veto reads the last poll's reports; with every worker over, the least loaded takes it, unrecorded."""
    sg = SglangCacheAwarePolicy(lambda: 0.0)
    sg.on_routed(RouteRequest("a", (1, 2, 3)), "r2")
    sg.on_routed(RouteRequest("a", (1, 2, 3)), "r0")
    hot = RouteRequest("b", (1, 2, 3, 4))
    busy = [ReplicaLoad("r0", 1, 64, waiting=8), ReplicaLoad("r1", 0, 64), ReplicaLoad("r2", 1, 64, kv_usage=0.8)]
    d = sg.choose(hot, busy)  # the poll at t=0: r0 and r2, the holders, are over the thresholds
    assert (d.first, d.reason) == ("r1", "cold")
    over = SglangCacheAwarePolicy(lambda: 0.0)
    over.on_routed(RouteRequest("a", (1, 2, 3)), "r0")
    d = over.choose(hot, busy[::2])  # every worker over: r2 holds as many in flight as r0 but r0 holds the prefix
    assert d.reason == "overload_fallback" and d.first in {"r0", "r2"}
    over.on_routed(hot, d.first)
    assert over.tree.match((1, 2, 3, 4), {"r0", "r2"})[0] == 3  # the fallback's request was not recorded


def test_sglang_baseline_ranks_by_expected_wait_from_polled_reports():
    """Between polls a worker's wait is its reported requests plus those sent since, floored at the live count;
    completions show only at the next poll, and the KV barrier adds 0.15 k / (1 - k) seconds."""
    now = [0.0]
    sg = SglangCacheAwarePolicy(lambda: now[0])
    per_request = 1024 / 2000  # seconds: the mean prefill at the default throughput
    new = iter(RouteRequest(f"m{i}", (1000 + i,)) for i in range(100))
    assert sg.choose(next(new), _loads(3, 0, 1)).first == "r1"  # the poll at t=0: r0 3, r1 0, r2 1
    for replica in ("r1", "r1", "r1"):
        sg.on_routed(next(new), replica)  # since the poll: r1 3
    # Live, r0 finished everything and r1 holds 3; reported plus sent: r0 3, r1 3, r2 1.
    assert sg.choose(next(new), _loads(0, 3, 1)).first == "r2"
    sg.on_routed(next(new), "r2")
    sg.on_routed(next(new), "r2")  # r2 3: now a three-way tie, drawn at random
    assert {sg.choose(next(new), _loads(0, 3, 3)).first for _ in range(30)} == {"r0", "r1", "r2"}
    assert sg.choose(next(new), _loads(0, 3, 5)).first in {"r0", "r1"}  # the live count floors r2 at 5
    now[0] = 10.0  # the next poll sees the completions
    assert sg.choose(next(new), _loads(0, 3, 3)).first == "r0"
    # KV usage 0.75 costs 0.15 x 3 = 0.45 s, under one request's 0.51 s: r0 (1 request, k 0.75) beats r1 (2).
    now[0] = 20.0
    kv = [ReplicaLoad("r0", 1, 64, kv_usage=0.75), ReplicaLoad("r1", 2, 64), ReplicaLoad("r2", 3, 64)]
    assert 0.15 * 0.75 / 0.25 < per_request
    assert sg.choose(next(new), kv).first == "r0"
    now[0] = 30.0
    kv = [ReplicaLoad("r0", 1, 64, kv_usage=0.78), ReplicaLoad("r1", 2, 64), ReplicaLoad("r2", 3, 64)]
    assert sg.choose(next(new), kv).first == "r1"  # 0.15 x 3.5 = 0.53 s: one request's worth and more
    # A worker that joined after the last poll is priced as the best reporting one plus its own live count: never
    # cheaper than a worker whose load is known, never starved.
    now[0] = 40.0
    assert sg.choose(next(new), _loads(2, 2, 2)).first in {"r0", "r1", "r2"}  # the poll: 2 requests each
    assert sg.choose(next(new), [*_loads(2, 2, 2), ReplicaLoad("r3", 1, 64)]).first != "r3"
    assert "r3" in {sg.choose(next(new), [*_loads(2, 2, 2), ReplicaLoad("r3", 0, 64)]).first for _ in range(30)}


def test_sglang_baseline_breaks_ties_at_random_reproducibly():
    def firsts() -> list[str]:
        sg = SglangCacheAwarePolicy(lambda: 0.0)
        return [sg.choose(RouteRequest(str(i), (100 + i,)), _loads(0, 0, 0)).first for i in range(30)]

    assert set(firsts()) == {"r0", "r1", "r2"}  # an idle cluster's new prompts do not all start on one replica
    assert firsts() == firsts()


def test_precise_index_follows_the_engines_caches_and_approximate_drifts():
    """Precise: once the events are in, the index holds exactly what each engine holds.

    Only with ``INDEX_HEADROOM``: the index also records the blocks of requests routed but not yet
    computed, and sized to the engine's pool exactly those predictions push out of its LRU up to 3%
    of the blocks an engine still holds (one replica of four here). Approximate: beliefs drift."""
    workload = shared_prefix(120, 960, 256, 32, 16, ENGINE.tau_range, seed=2)  # 1.5x the cluster's KV
    universe = {h for s in workload.sessions for h in s.turns[0].block_hashes}

    def believed(sim, replica_id):
        return {h for h in universe if replica_id in sim.policy.index.match((h,))}

    assert INDEX_HEADROOM > 1
    precise, _ = _run(workload, "prefix", load=1.2)
    for r in precise.replicas:
        assert believed(precise, r.replica_id) == r.kv.held()
    approx, _ = _run(workload, "prefix_approx", load=1.2)
    assert any(believed(approx, r.replica_id) - r.kv.held() for r in approx.replicas)


def _point(x: float, saturated: bool, ttft: dict[str, float]) -> dict:
    rr = {"throughput_tps": 50.0 if saturated else 100.0, "offered_tps": 100.0, "ttft_p90_s": 1.0}
    return {"x": x, "policies": {"round_robin": rr} | {name: {"ttft_p90_s": t} for name, t in ttft.items()}}


def test_a_baseline_is_tuned_at_the_saturation_points_and_compared_beside_its_default():
    families = {"round_robin": "round_robin", "b": "b", "b[k=1]": "b", "b[k=2]": "b"}
    # b[k=2] is fastest below saturation only; at the saturation points (the second of each sweep) b[k=1] is.
    before = {"b": 0.5, "b[k=1]": 0.4, "b[k=2]": 0.1}
    at = {"b": 0.5, "b[k=1]": 0.2, "b[k=2]": 0.3}
    sweep = [_point(1.0, False, before), _point(2.0, True, at)]
    experiments = {
        "load": sweep,
        "hot_prefixes": sweep,
        "multi_turn": [_point(1.0, False, before), _point(2.0, False, at)],
    }
    tuned = tune(experiments, families)
    assert tuned == {"round_robin": "round_robin", "b": "b[k=1]"}
    assert compared({"ray_prefix": "ray_prefix[x=1]", "sglang_cache_aware": "sglang_cache_aware"}) == (
        "ray_prefix",
        "sglang_cache_aware",
        "ray_prefix[x=1]",
    )
