"""The ingress hashes rendered prompts as its process's router would (deployments/ingress/prompt_hasher.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from contracts.engine_report import BlockGeometry, RoutingHint
from deployments.ingress.prompt_hasher import PromptHasher
from deployments.router import prompt_hashing
from routing.policies import PrefixPolicy
from routing.router import ReplicaView, Router

PROMPTS = [tuple(range(start, start + 700)) for start in range(0, 4000, 500)]  # overlapping: the memo is shared


def test_nothing_is_hashed_before_the_router_says_how():
    assert PromptHasher().hash("model-never-routed", PROMPTS[0]) == ((), None)


def test_the_router_takes_the_ingress_hashes_and_they_are_its_own():
    router = Router(PrefixPolicy(), max_prefix_blocks=16, none_hash_seed="engines' seed")
    replicas = [ReplicaView("r1", 4, geometry=BlockGeometry(16, 32, 64))]
    router.request("first", None, replicas)
    prompt_hashing.publish("model-a", router.hashing)
    hasher = PromptHasher()
    with ThreadPoolExecutor(4) as pool:  # the render pool's threads share one memo
        made = list(pool.map(lambda prompt: hasher.hash("model-a", prompt), PROMPTS * 4))
    for i, (hashes, hashing) in enumerate(made):
        prompt = PROMPTS[i % len(PROMPTS)]
        assert hashing == router.hashing and len(hashes) == 16
        own = Router(PrefixPolicy(), max_prefix_blocks=16, none_hash_seed="engines' seed")
        own.request("first", None, replicas)
        assert router.request(f"r{i}", RoutingHint(prompt, None, hashes, hashing), replicas).block_hashes == (
            own.request("x", RoutingHint(prompt), replicas).block_hashes
        )
