"""The request routers' Prometheus series, in a registry of their own that the ingress exposes.

Routers live in the ingress replicas' processes; ``/metrics`` merges this registry across every
ingress replica, so counters are cluster totals and the index gauge is the sum over routers.
Predicted hits (tokens of the prompt the chosen replica was believed to hold) sit beside vLLM's
own ``vllm:prefix_cache_hits_total`` on the same page, so the index's accuracy can be read off.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

DECISIONS = Counter(
    "dflash_router_decisions",
    "Routing decisions, by policy and by why the winner won (prefix, cold, imbalance, session, rr, pow2).",
    ["model", "policy", "reason"],
    registry=REGISTRY,
)
DECISION_SECONDS = Histogram(
    "dflash_router_decision_seconds",
    "Time to choose a replica, prompt hashing included where the router hashed the prompt.",
    ["model", "policy"],
    buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2),
    registry=REGISTRY,
)
PROMPTS_HASHED = Counter(
    "dflash_router_prompts_hashed",
    "Prompts routed, by where their block hashes were made: `ingress` (its render pool, off the routing loop) or "
    "`router` (before the router had said how it hashes, or after the replicas' geometry changed).",
    ["model", "by"],
    registry=REGISTRY,
)
PROMPT_TOKENS = Counter(
    "dflash_router_prompt_tokens", "Prompt tokens (in full KV blocks) of routed requests.", ["model"], registry=REGISTRY
)
PREDICTED_HIT_TOKENS = Counter(
    "dflash_router_predicted_hit_tokens",
    "Prompt tokens the chosen replica was believed to hold in its prefix cache (compare vllm:prefix_cache_hits).",
    ["model"],
    registry=REGISTRY,
)
INDEX_BLOCKS = Gauge(
    "dflash_router_index_blocks",
    "(replica, block) entries in the routers' prefix index.",
    ["model"],
    registry=REGISTRY,
)
STREAM_CONNECTED = Gauge(
    "dflash_router_stream_connected",
    "Routers following the shared routing stream in Redis (the others route on local knowledge).",
    ["model"],
    registry=REGISTRY,
)
STREAM_EVENTS = Counter(
    "dflash_router_stream_events",
    "KV events and sibling routing records applied from the shared stream.",
    ["model"],
    registry=REGISTRY,
)
REPLICAS = Gauge(
    "dflash_router_replicas",
    "Running engine replicas each router sees (summed over ingress replicas; 0: scaled to zero or starting).",
    ["model"],
    registry=REGISTRY,
)
