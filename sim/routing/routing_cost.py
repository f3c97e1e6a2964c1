"""What one routing decision of the ``prefix`` policy costs: hashing an 8k-token prompt plus ``choose``.

The router hashes the prompt's leading ``ROUTE_BLOCKS`` blocks (256, 4k tokens: half of this prompt),
as ``deployments/router/request_router.py`` does. The index is filled to its bound first (``capacity_blocks`` entries
for each of 64 replicas), then one 8192-token prompt is routed repeatedly in three situations:

* ``cold`` — no replica holds any of it;
* ``shared_system_prompt`` — every replica holds its first 2048 tokens (a system prompt all traffic
  shares) and one replica holds all of it (that conversation's earlier turn): the common case;
* ``held_everywhere`` — every replica holds all of it: the worst case for the leading-block match.

Hashing goes through the router's memoised :class:`routing.hashing.BlockHasher`: in ``cold`` the
prompt is new (an empty memo each time: every block pays pickle + SHA-256); in the other two its blocks
were seen before (the system prompt by other requests, the rest by the conversation's earlier turn),
so they are memo hits, as in a router that has served that traffic.

Loads are balanced (no imbalance short cut), so the full scoring path runs. Times are the thread's
CPU time (``time.thread_time``): the routing *cost*, unaffected by other processes on a shared machine
(the wall-clock p99 is kept too, as ``wall_p99_ms``). The garbage collector runs as a router's would.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass

from contracts.engine_report import BlockGeometry
from routing.hashing import BlockHash, BlockHasher
from routing.policies import PrefixPolicy, PrefixPolicyConfig
from routing.policy import ReplicaLoad, RouteRequest
from sim.routing.cluster import ROUTE_BLOCKS
from sim.routing.metrics import percentile
from sim.routing.workloads import VOCAB

PROMPT_TOKENS = 8192
SYSTEM_TOKENS = 2048
REPLICAS = 64
BLOCK_SIZE = 16


@dataclass(frozen=True, slots=True)
class CostResult:
    scenario: str
    hash_p50_ms: float
    hash_p99_ms: float
    choose_p50_ms: float
    choose_p99_ms: float
    total_p50_ms: float
    total_p99_ms: float
    wall_p99_ms: float


def _fill(policy: PrefixPolicy, rng: random.Random) -> None:
    """Each replica's index share filled to its bound with 512-block chains of unrelated hashes."""
    cap = policy.config.capacity_blocks
    for r in range(REPLICAS):
        for start in range(0, cap, 512):
            chain = tuple(BlockHash(rng.getrandbits(64)) for _ in range(min(512, cap - start)))
            policy.on_routed(RouteRequest("fill", chain), f"replica-{r:02d}")


def measure(capacity_blocks: int, iterations: int, seed: int = 0) -> dict[str, object]:
    out: dict[str, object] = {
        "replicas": REPLICAS,
        "prompt_tokens": PROMPT_TOKENS,
        "index_capacity_blocks_per_replica": capacity_blocks,
    }
    policy = PrefixPolicy(PrefixPolicyConfig(capacity_blocks=capacity_blocks))
    out[policy.name] = _measure_policy(policy, iterations, random.Random(seed))
    return out


def _measure_policy(policy: PrefixPolicy, iterations: int, rng: random.Random) -> dict[str, object]:
    _fill(policy, rng)
    tokens = [rng.randrange(VOCAB) for _ in range(PROMPT_TOKENS)]
    hashes = _route_hashes(tokens, BlockHasher())
    system = hashes[: SYSTEM_TOKENS // BLOCK_SIZE]
    loads = [ReplicaLoad(f"replica-{r:02d}", 20 + rng.randrange(8), 64, 0.0, 0.5) for r in range(REPLICAS)]
    results = []
    for scenario, holders in (
        ("cold", {}),
        ("shared_system_prompt", {f"replica-{r:02d}": system for r in range(1, REPLICAS)} | {"replica-00": hashes}),
        ("held_everywhere", {f"replica-{r:02d}": hashes for r in range(REPLICAS)}),
    ):
        for replica, held in holders.items():
            policy.on_routed(RouteRequest("setup", held), replica)
        results.append(_time(scenario, policy, tokens, loads, iterations))
    return {
        "hashed_tokens": len(hashes) * BLOCK_SIZE,
        "index_entries": policy.index.size_blocks(),
        "index_entry_bound": REPLICAS * policy.config.capacity_blocks,
        "scenarios": [asdict(r) for r in results],
    }


def _route_hashes(tokens: list[int], hasher: BlockHasher) -> tuple[BlockHash, ...]:
    return tuple(hasher.hashes(tokens, BlockGeometry.uniform(BLOCK_SIZE), ROUTE_BLOCKS))


def _time(
    scenario: str, policy: PrefixPolicy, tokens: list[int], loads: list[ReplicaLoad], iterations: int
) -> CostResult:
    hash_ms, choose_ms, wall_ms = [], [], []
    warm = BlockHasher()
    _route_hashes(tokens, warm)
    for i in range(iterations):
        hasher = BlockHasher() if scenario == "cold" else warm
        w0, t0 = time.perf_counter(), time.thread_time()
        hashes = _route_hashes(tokens, hasher)
        t1 = time.thread_time()
        policy.choose(RouteRequest(f"probe-{i}", hashes), loads)
        t2, w2 = time.thread_time(), time.perf_counter()
        hash_ms.append((t1 - t0) * 1e3)
        choose_ms.append((t2 - t1) * 1e3)
        wall_ms.append((w2 - w0) * 1e3)
    total = [h + c for h, c in zip(hash_ms, choose_ms, strict=True)]
    return CostResult(
        scenario,
        percentile(hash_ms, 50),
        percentile(hash_ms, 99),
        percentile(choose_ms, 50),
        percentile(choose_ms, 99),
        percentile(total, 50),
        percentile(total, 99),
        percentile(wall_ms, 99),
    )
