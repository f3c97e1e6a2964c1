"""The simulator's Ray baseline decides as Ray's own router does, request by request.

One request stream goes through upstream's ``PrefixCacheAffinityRouter._prefix_match_best_replicas`` and
``on_request_routed`` (ray 2.60, called on a stand-in for the router's state, with its tree actor replaced
by an in-process ``PrefixTree``: no cluster) and through ``sim.routing.baselines.RayPrefixPolicy``; at
every request both must name the same candidate replicas, or both fall back to power of two.
"""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

import pytest

from routing.policy import ReplicaLoad, RouteRequest
from sim.routing.baselines import RayPrefixConfig, RayPrefixPolicy
from sim.routing.baselines.ray_prefix import block_text

upstream = pytest.importorskip("ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router")
from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_tree import PrefixTree  # noqa: E402
from ray.serve._private.common import DeploymentID, ReplicaID  # noqa: E402

Router = upstream.PrefixCacheAffinityRouter


class _InProcessActor:
    """The tree actor's handle: ``actor.method.remote(...)`` runs the method here (``ray.get`` is identity)."""

    def __init__(self, tree: PrefixTree) -> None:
        self._tree = tree

    def __getattr__(self, name: str) -> Any:
        return SimpleNamespace(remote=getattr(self._tree, name))


def _upstream_router(ids: list[ReplicaID], threshold: float) -> SimpleNamespace:
    tree = PrefixTree()
    tree.add_tenants([r.to_full_id_str() for r in ids], 0.0)
    replicas = {r: SimpleNamespace(replica_id=r, max_ongoing_requests=10_000) for r in ids}
    return SimpleNamespace(
        _tree_actor=_InProcessActor(tree),
        _replicas=replicas,
        _replica_queue_len_cache={},
        _use_replica_queue_len_cache=True,
        _imbalanced_threshold=threshold,
        _match_rate_threshold=0.1,
        _extract_text_from_request=lambda request: request.args[0],
    )


def _stream(rng: random.Random, n: int) -> list[tuple[int, ...]]:
    """Prompts as block hashes: a few shared prefixes with their own suffixes, and some cold prompts."""
    prefixes = [tuple(rng.getrandbits(60) for _ in range(rng.randint(2, 12))) for _ in range(6)]
    out = []
    for _ in range(n):
        suffix = tuple(rng.getrandbits(60) for _ in range(rng.randint(1, 4)))
        out.append(suffix if rng.random() < 0.2 else rng.choice(prefixes) + suffix)
    return out


@pytest.mark.parametrize("threshold", [float("inf"), 10.0])
def test_the_ray_baseline_names_the_candidates_rays_router_names(monkeypatch, threshold):
    monkeypatch.setattr(upstream.ray, "get", lambda value: value)
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DeploymentID(name="engine", app_name="app")) for i in range(4)]
    names = [r.to_full_id_str() for r in ids]
    router = _upstream_router(ids, threshold)
    ours = RayPrefixPolicy(lambda: 0.0, RayPrefixConfig(imbalanced_threshold=threshold))
    rng = random.Random(7)
    fallbacks = 0
    for i, hashes in enumerate(_stream(rng, 300)):
        queue = {r: rng.randint(0, 16) for r in ids}
        router._replica_queue_len_cache = queue
        pending = SimpleNamespace(args=[block_text(hashes)])
        (theirs,) = asyncio.run(Router._prefix_match_best_replicas(router, pending, list(router._replicas.values())))
        decision = ours.choose(
            RouteRequest(f"q{i}", hashes), [ReplicaLoad(r.to_full_id_str(), queue[r], 64) for r in ids]
        )
        if not theirs:  # Ray falls back to power of two (random): so must we
            fallbacks += 1
            assert decision.reason == "imbalance", (i, decision)
            chosen = names[min(range(4), key=lambda k: (queue[ids[k]], k))]
        else:
            assert {r.replica_id.to_full_id_str() for r in theirs} == set(decision.ranked[0]), (i, decision)
            chosen = decision.ranked[0][0]  # the candidate with the shortest queue, as Serve takes it
        Router.on_request_routed(router, pending, ReplicaID.from_full_id_str(chosen), None)
        ours.on_routed(RouteRequest(f"q{i}", hashes), chosen)
    assert (fallbacks > 0) == (threshold != float("inf"))  # both branches ran where they can
