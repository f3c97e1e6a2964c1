"""Routing policies, table-driven: prefix affinity, imbalance guard, full replicas, cold spread, sessions."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from routing.policies import POLICIES, PowerOfTwoPolicy, PrefixPolicy, PrefixPolicyConfig, RoundRobinPolicy
from routing.policies import prefix as prefix_module
from routing.policy import ReplicaLoad, RouteRequest


def _replicas(*in_flight: int, capacity: int = 8, kv: float = 0.0) -> list[ReplicaLoad]:
    return [ReplicaLoad(f"r{i}", n, capacity, kv_usage=kv) for i, n in enumerate(in_flight)]


def _req(hashes: range | list[int], rid: str = "x", session: str | None = None) -> RouteRequest:
    return RouteRequest(rid, tuple(hashes), session)


def test_registry_names():
    assert set(POLICIES) == {"round_robin", "pow2", "prefix"}


def test_prefix_follows_the_cache():
    p = PrefixPolicy()
    p.on_routed(_req(range(10)), "r2")
    d = p.choose(_req(range(12)), _replicas(1, 1, 2))
    assert d.first == "r2" and d.reason == "prefix" and d.matched_blocks == 10


def test_prefix_routed_burst_lands_together_before_any_engine_report():
    p = PrefixPolicy()
    reps = _replicas(0, 0, 0, 0)
    firsts = []
    for i in range(6):
        req = _req(range(20), rid=str(i))
        d = p.choose(req, reps)
        p.on_routed(req, d.first)
        firsts.append(d.first)
    assert len(set(firsts)) == 1


@pytest.mark.parametrize(
    ("in_flight", "expected", "reason"),
    [
        ((20, 2, 3), "r1", "imbalance"),  # the cache holder is swamped: least loaded wins
        ((5, 2, 3), "r0", "prefix"),  # mild load difference: stay with the cache
    ],
)
def test_imbalance_guard(in_flight, expected, reason):
    p = PrefixPolicy(PrefixPolicyConfig(imbalance_abs=8, imbalance_rel=1.5))
    p.on_routed(_req(range(10)), "r0")
    d = p.choose(_req(range(10)), _replicas(*in_flight, capacity=64))
    assert (d.first, d.reason) == (expected, reason)


def test_full_replica_ranks_last_even_with_the_cache():
    p = PrefixPolicy(PrefixPolicyConfig(imbalance_abs=100))
    p.on_routed(_req(range(10)), "r0")
    d = p.choose(_req(range(10)), _replicas(8, 7, 7, capacity=8))
    assert d.first != "r0" and d.ranked[-1] == ("r0",)


def test_cold_requests_spread_over_replicas():
    p = PrefixPolicy()
    in_flight = Counter()
    for i in range(12):
        req = _req([1000 * i + k for k in range(5)], rid=str(i))
        reps = [ReplicaLoad(f"r{j}", in_flight[f"r{j}"], 64) for j in range(4)]
        d = p.choose(req, reps)
        assert d.reason == "cold"
        p.on_routed(req, d.first)
        in_flight[d.first] += 1
    assert sorted(in_flight.values()) == [3, 3, 3, 3]


def test_cold_prompts_stay_within_imbalance_abs_of_the_least_loaded():
    """A replica more than imbalance_abs above the least loaded gets no cold prompt, however little it was sent."""
    p = PrefixPolicy()
    # r2 is 40 above the least loaded (beyond the slack of 32) but under 1.5x it: no cluster-wide imbalance
    loads = [ReplicaLoad("r0", 100, 200), ReplicaLoad("r1", 105, 200), ReplicaLoad("r2", 140, 200)]
    chosen = []
    for i in range(4):
        req = _req(range(100 * i + 1, 100 * i + 9), rid=str(i))
        d = p.choose(req, loads)
        p.on_routed(req, d.first)
        chosen.append((d.first, d.reason))
    assert chosen == [("r0", "cold"), ("r1", "cold"), ("r0", "cold"), ("r1", "cold")]


def test_a_replica_busy_with_hits_gets_fewer_cold_prompts():
    """Hits count their uncached tail: r0's prefix is hot, so the next two cold prompts go to r1."""
    p = PrefixPolicy()
    loads = _replicas(0, 0, capacity=64)
    for rid, replica in (("a", "r0"), ("b", "r1")):  # one 8-block cold prompt each
        p.on_routed(_req(range(1000 * ord(rid), 1000 * ord(rid) + 8), rid=rid), replica)
    for i in range(3):  # three hits on r0's prefix, each with 2 blocks of its own
        hit = _req([*range(1000 * ord("a"), 1000 * ord("a") + 8), 50_000 + 2 * i, 50_001 + 2 * i], rid=f"hit{i}")
        assert p.choose(hit, loads).first == "r0"
        p.on_routed(hit, "r0")
    chosen = []
    for i in range(3):
        cold = _req(range(100 * i + 1, 100 * i + 9), rid=f"cold{i}")
        d = p.choose(cold, loads)
        p.on_routed(cold, d.first)
        chosen.append((d.first, d.reason))
    # sent (a replica's first request joins it to the count): r0 3 x 2 = 6, r1 0 -> r1 (8) -> r0 (14)
    assert chosen == [("r1", "cold"), ("r0", "cold"), ("r1", "cold")]


def test_a_new_replica_starts_level_with_the_least_worked():
    """A replica added later takes its share of cold prompts, not every one until it catches up."""
    p = PrefixPolicy()
    for i in range(6):
        p.on_routed(_req(range(100 * i + 1, 100 * i + 9), rid=str(i)), f"r{i % 2}")  # r0 and r1: 16 blocks each
    chosen = []
    for i in range(6):
        cold = _req(range(10_000 + 100 * i, 10_000 + 100 * i + 8), rid=f"new{i}")
        d = p.choose(cold, _replicas(0, 0, 0, capacity=64))
        p.on_routed(cold, d.first)
        chosen.append(d.first)
    # r2 joins level with the least-worked (its first request counts nothing), then all three take turns
    assert chosen == ["r2", "r0", "r2", "r1", "r0", "r2"], chosen


def test_prefill_work_sent_long_ago_fades():
    """A replica that was busy earlier is not kept from cold prompts for ever: its work fades as requests go by."""
    p = PrefixPolicy(PrefixPolicyConfig(prefill_memory=4))  # two replicas: the last ~8 routed requests count
    doc = list(range(1, 9))
    p.on_routed(_req(doc, rid="a"), "r1")
    p.on_routed(_req(range(101, 109), rid="b"), "r0")
    for i in range(30):  # r1 takes 30 turns of a conversation, 10 new blocks each
        p.on_routed(_req([*doc, *range(1000 + 10 * i, 1010 + 10 * i)], rid=f"turn{i}"), "r1")
    chosen = []
    for i in range(16):  # 8 blocks each: without fading, r1's 300 blocks would keep every one on r0
        cold = _req(range(10_000 + 100 * i, 10_008 + 100 * i), rid=f"cold{i}")
        d = p.choose(cold, _replicas(0, 0, capacity=64))
        p.on_routed(cold, d.first)
        chosen.append(d.first)
    assert chosen[0] == "r0" and chosen.count("r1") >= 4, chosen


def test_a_removed_replica_is_forgotten_by_the_cold_order():
    p = PrefixPolicy()
    for i in range(3):  # r0: two counted prompts (16 blocks); r1: one, its first (0)
        p.on_routed(_req(range(100 * i + 1, 100 * i + 9), rid=str(i)), "r0" if i < 2 else "r1")
    p.on_replica_removed("r0")
    # r0 comes back empty, level with r1, and ahead of it on the tie; remembered, it would rank after r1
    loads = [ReplicaLoad("r0", 1, 64), ReplicaLoad("r1", 0, 64)]
    assert p.choose(_req(range(1001, 1009), rid="c"), loads).first == "r0"


def test_reweighing_keeps_the_order(monkeypatch: pytest.MonkeyPatch):
    """The fading weight is brought back to 1 when it grows large; decisions are those without that."""

    def decisions() -> list[str]:
        p = PrefixPolicy(PrefixPolicyConfig(prefill_memory=1))  # two replicas: the weight doubles per request
        rng = random.Random(7)
        out = []
        for i in range(600):  # 2^600 is past the reweigh bound and still a finite float
            req = _req(range(10_000 * i, 10_000 * i + rng.randrange(1, 12)), rid=str(i))
            d = p.choose(req, _replicas(0, 0, capacity=64))
            p.on_routed(req, d.first)
            out.append(d.first)
        assert all(math.isfinite(v) for v in p._prefill_sent.values())
        return out

    reweighed = decisions()
    monkeypatch.setattr(prefix_module, "_REWEIGH_ABOVE", math.inf)
    assert reweighed == decisions()


def test_session_affinity_is_stable_and_spreads():
    p = PrefixPolicy()
    reps = _replicas(0, 0, 0, 0)
    chosen = {s: p.choose(_req([], session=s), reps).first for s in (f"user-{i}" for i in range(40))}
    again = {s: p.choose(_req([], session=s), reps).first for s in chosen}
    assert chosen == again
    assert len(set(chosen.values())) == 4


def test_round_robin_takes_turns_and_skips_full():
    p = RoundRobinPolicy()
    seen = []
    for _ in range(4):
        d = p.choose(_req([]), _replicas(0, 8, 0, capacity=8))
        p.on_routed(_req([]), d.first)
        seen.append(d.first)
    assert "r1" not in seen and set(seen) == {"r0", "r2"}


def test_pow2_prefers_less_loaded_of_its_pair():
    p = PowerOfTwoPolicy(seed=0)
    rng_counts = Counter(p.choose(_req([]), _replicas(0, 6)).ranked[0][0] for _ in range(50))
    assert rng_counts == {"r0": 50}  # with two replicas the pair is both; the idle one ranks first


def test_pow2_samples_a_random_pair_and_ranks_it_first():
    """Four replicas loaded 0 < 2 < 4 < 6: each of the six pairs is equally likely and its less loaded one
    wins, so r0 wins 3/6 of draws, r1 2/6, r2 1/6 and r3 never; the pair leads, the rest follow by load."""
    p = PowerOfTwoPolicy(seed=1)
    decisions = [p.choose(_req([]), _replicas(0, 2, 4, 6)) for _ in range(1200)]
    wins = Counter(d.ranked[0][0] for d in decisions)
    assert wins["r3"] == 0 and wins["r0"] > wins["r1"] > wins["r2"] > 0
    assert abs(wins["r0"] / 1200 - 0.5) < 0.06 and abs(wins["r2"] / 1200 - 1 / 6) < 0.05
    assert len({d.ranked[0] for d in decisions}) == 6  # every pair was drawn
    for d in decisions:
        first, *rest = d.ranked
        assert len(first) == 2 and list(first) == sorted(first)  # loads grow with the index here
        assert [r for (r,) in rest] == sorted(r for (r,) in rest)


def test_choose_does_not_mutate():
    p = PrefixPolicy()
    req = _req(range(5))
    p.choose(req, _replicas(0, 0))
    assert p.index.size_blocks() == 0


def test_removed_replica_is_forgotten():
    p = PrefixPolicy()
    p.on_routed(_req(range(5)), "r0")
    p.on_replica_removed("r0")
    assert p.choose(_req(range(5)), _replicas(0, 0)).reason == "cold"


def test_random_workload_never_picks_a_full_replica_when_one_has_room():
    rng = random.Random(7)
    p = PrefixPolicy()
    for i in range(300):
        reps = [ReplicaLoad(f"r{j}", rng.randrange(0, 9), 8) for j in range(5)]
        req = _req(range(rng.randrange(0, 3) * 10, 40), rid=str(i))
        d = p.choose(req, reps)
        p.on_routed(req, d.first)
        if any(r.in_flight < r.capacity for r in reps):
            assert next(r for r in reps if r.replica_id == d.first).in_flight < 8


def test_short_shared_preamble_does_not_pull_new_prompts_together():
    """Chat-template boilerplate shares a block or two across all prompts: still a cold prompt."""
    p = PrefixPolicy(PrefixPolicyConfig(min_match_fraction=0.1))
    chosen = []
    for i in range(4):
        req = _req([0, *range(1000 * (i + 1), 1000 * (i + 1) + 30)], rid=str(i))  # block 0 shared by all
        d = p.choose(req, _replicas(0, 0))
        p.on_routed(req, d.first)
        chosen.append((d.first, d.reason))
    assert {c for c, _ in chosen} == {"r0", "r1"}
    assert all(reason == "cold" for _, reason in chosen)


def test_prefix_policy_follows_kv_events():
    from routing.events import BlocksRemoved, BlocksStored, ReplicaCleared, ReplicaSnapshot

    policy = PrefixPolicy()
    hashes = tuple(range(1, 9))
    policy.observe(BlocksStored("a", hashes))
    assert policy.index.match(hashes) == {"a": 8}
    policy.observe(BlocksRemoved("a", hashes[4:]))  # the engine evicted the tail
    assert policy.index.match(hashes) == {"a": 4}
    policy.observe(ReplicaSnapshot("b", hashes[:2]))
    assert policy.index.match(hashes) == {"a": 4, "b": 2}
    policy.observe(ReplicaCleared("a"))
    assert policy.index.match(hashes) == {"b": 2}
    assert policy.index.blocks_held("a") == 0


def test_kv_event_wire_form_round_trips():
    from routing import events

    for event in (
        events.BlocksStored("r1", (1, 2**64 - 1)),
        events.BlocksRemoved("r1", (5,)),
        events.ReplicaCleared("r2"),
        events.ReplicaSnapshot("r3", ()),
    ):
        assert events.decode(events.encode(event)) == event
    with pytest.raises((ValueError, KeyError)):
        events.decode(b'{"t":"?","r":"x"}')
