"""The router's state around a policy (routing/router.py): hashing once, in-flight counts, membership."""

from __future__ import annotations

import pytest

from contracts.engine_report import BlockGeometry, PromptHashing, RoutingHint
from routing.events import BlocksStored, ReplicaSnapshot
from routing.hashing import block_hashes
from routing.policies import PrefixPolicy, RoundRobinPolicy
from routing.router import ReplicaView, Router, max_ongoing_requests

PROMPT = tuple(range(1000, 1300))
GEOMETRY = BlockGeometry(16, 32, 64)


def _views(*ids: str, geometry: BlockGeometry | None = GEOMETRY, capacity: int = 4) -> list[ReplicaView]:
    return [ReplicaView(rid, capacity, geometry=geometry) for rid in ids]


def _route(router: Router, request_id: str, replicas: list[ReplicaView], prompt=PROMPT) -> str:
    request = router.request(request_id, RoutingHint(prompt), replicas)
    decision = router.choose(request, replicas)
    router.sent(request_id, decision.first)
    return decision.first


def test_hashes_in_the_geometry_the_replicas_report_and_vllms_default_before():
    router = Router(PrefixPolicy())
    assert router.request("a", RoutingHint(PROMPT), _views("r1", geometry=None)).block_hashes == tuple(
        block_hashes(PROMPT, BlockGeometry.DEFAULT)
    )
    request = router.request("b", RoutingHint(PROMPT), [*_views("r1", geometry=None), *_views("r2")])
    assert request.block_hashes == tuple(block_hashes(PROMPT, GEOMETRY))
    assert router.geometry == GEOMETRY


def test_hashes_made_as_the_router_hashes_are_taken_and_any_others_are_remade():
    router = Router(PrefixPolicy(), max_prefix_blocks=8, none_hash_seed="seed")
    replicas = _views("r1")
    router.request("first", None, replicas)  # the replicas' geometry is learnt
    assert router.hashing == PromptHashing(GEOMETRY, 8, "seed")
    made = (11, 12, 13)  # not the prompt's: the router cannot have made these itself
    assert router.request("a", RoutingHint(PROMPT, None, made, router.hashing), replicas).block_hashes == made
    own = tuple(block_hashes(PROMPT, GEOMETRY, seed="seed")[:8])
    for other in (
        PromptHashing(BlockGeometry.DEFAULT, 8, "seed"),  # before the ingress heard of the replicas' geometry
        PromptHashing(GEOMETRY, 4, "seed"),
        PromptHashing(GEOMETRY, 8, "other seed"),
        None,  # not hashed at the ingress
    ):
        assert router.request(f"b{other}", RoutingHint(PROMPT, None, made, other), replicas).block_hashes == own
    assert router.hashed == {"ingress": 1, "router": 4}


def test_max_prefix_blocks_bounds_the_hashed_prompt_and_no_hint_routes_cold():
    router = Router(PrefixPolicy(), max_prefix_blocks=2)
    assert len(router.request("a", RoutingHint(PROMPT), _views("r1")).block_hashes) == 2
    assert router.request("b", None, _views("r1")).block_hashes == ()


def test_a_request_routed_again_keeps_its_hashes_and_the_first_prediction():
    router = Router(PrefixPolicy())
    replicas = _views("r1", "r2")
    home = _route(router, "warm", replicas)
    request = router.request("again", RoutingHint(PROMPT), replicas)
    first = router.choose(request, replicas)
    assert first.first == home and first.matched_blocks > 0
    assert router.request("again", RoutingHint((1, 2, 3)), replicas) is request  # memoised by request id
    routed = router.sent("again", "r2" if home == "r1" else "r1")  # Serve found the first choice full
    assert routed is not None and routed.predicted_blocks == 0


def test_in_flight_counts_follow_sent_and_completed_and_reach_the_policy():
    router = Router(RoundRobinPolicy())
    replicas = _views("r1", "r2", capacity=1)
    first = _route(router, "a", replicas, prompt=())
    assert router.in_flight(first) == 1
    assert router.sent("unknown", "r2") is None  # no routing attempt recorded: counted, nothing to record
    router.completed("a")
    router.completed("a")  # a second report of the same completion changes nothing
    assert router.in_flight(first) == 0 and router.in_flight("r2") == 1


def test_scale_down_forgets_a_replica_learnt_only_from_the_stream():
    """The stale-replica bug: a replica this router never routed to kept its index entries after it left."""
    router = Router(PrefixPolicy())
    router.update_replicas(["r1", "r2"])
    hashes = tuple(block_hashes(PROMPT, GEOMETRY))
    assert router.observe(BlocksStored("r3", hashes))  # a sibling routed there; this router never did
    assert router.policy.index.blocks_held("r3") == len(hashes)
    assert router.update_replicas(["r1", "r2"]) == ["r3"]
    assert router.policy.index.blocks_held("r3") == 0
    assert not router.observe(ReplicaSnapshot("r3", hashes))  # a late snapshot of the gone replica
    assert router.policy.index.blocks_held("r3") == 0


def test_a_replica_that_died_is_forgotten_and_a_new_one_is_welcome():
    router = Router(PrefixPolicy())
    replicas = _views("r1", "r2")
    home = _route(router, "a", replicas)
    router.remove(home)
    assert router.in_flight(home) == 0 and router.policy.index.blocks_held(home) == 0
    assert router.observe(BlocksStored("r9", (1, 2)))  # not yet in Serve's list: accepted
    assert router.update_replicas(["r1", "r2", "r9"]) == []


@pytest.mark.parametrize(("seqs", "headroom", "expected"), [(64, 1.5, 96), (5, 1.1, 6), (1, 1.0, 1), (8, 1.0, 8)])
def test_max_ongoing_requests_rounds_up(seqs: int, headroom: float, expected: int):
    assert max_ongoing_requests(seqs, headroom) == expected
