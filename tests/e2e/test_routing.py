"""Prefix-aware routing with two real replicas: a conversation's next turn goes where its KV cache is.

Proof comes from the engines' own prefix-cache counters: after each second turn, the replica that
served it must have found the first turn's prompt in its cache. With two replicas and a blind router,
six conversations would all land right by chance once in 64 runs.
"""

from __future__ import annotations

import openai
import pytest

from bench.prom import sample_total
from contracts.engine_report import ReplicaReport
from tests.e2e.served import Served
from tools.e2e_app import AR_MODEL

pytestmark = pytest.mark.e2e

TOPICS = ["sailing", "baking bread", "chess openings", "volcanoes", "jazz history", "beekeeping"]


def _system(topic: str) -> str:
    # Over 1,024 tokens: on vLLM's CPU backend the tiny Gemma-4's full-attention layers cache in 512-token
    # pages (its hybrid KV layout pads page sizes), so shorter prompts cannot hit at all.
    facts = " ".join(f"Fact {i} about {topic} is worth remembering in detail." for i in range(95))
    return f"You are an expert on {topic}. {facts}"


def _delta(before: dict[str, ReplicaReport], after: dict[str, ReplicaReport], key: str) -> dict[str, float]:
    return {rid: getattr(after[rid], key) - (getattr(before[rid], key) if rid in before else 0.0) for rid in after}


def _hashed_at_ingress(served: Served) -> tuple[float, int]:
    """Prompts routed on hashes made at the ingress, over every ingress replica; and how many replicas there are."""
    texts = served.ingress_metrics()
    return sum(sample_total(t, "dflash_router_prompts_hashed_total", by="ingress") or 0.0 for t in texts), len(texts)


def test_second_turn_lands_on_the_replica_holding_the_first(served: Served):
    """Routed on block hashes the ingress made in its render pool: the router published how it hashes."""
    client = openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=300)
    hashed_at_ingress, _ = _hashed_at_ingress(served)
    stats = served.replica_reports(AR_MODEL)
    assert len(stats) == 2, "the routing tests need two replicas"
    first_turn_replica: dict[str, str] = {}
    for topic in TOPICS:
        messages = [{"role": "system", "content": _system(topic)}, {"role": "user", "content": "Tell me one thing."}]
        first = client.chat.completions.create(model=AR_MODEL, messages=messages, max_tokens=8, temperature=0)
        after_first = served.replica_reports(AR_MODEL)
        queried = _delta(stats, after_first, "prefix_cache_queries_total")
        first_turn_replica[topic] = max(queried, key=queried.get)
        messages += [
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "And another?"},
        ]
        client.chat.completions.create(model=AR_MODEL, messages=messages, max_tokens=8, temperature=0)
        stats_after = served.replica_reports(AR_MODEL)
        hits = _delta(after_first, stats_after, "prefix_cache_hits_total")
        home = first_turn_replica[topic]
        block = stats_after[home].geometry.block_size
        # The system prompt spans over ten blocks; only its replica can hit them. The other replica has
        # seen other topics, which share less than one block with this one.
        assert hits[home] >= 4 * block, (topic, hits, home)
        assert all(h == 0 for rid, h in hits.items() if rid != home), (topic, hits, home)
        stats = stats_after
    assert len(set(first_turn_replica.values())) == 2, "new conversations were not spread over both replicas"
    # Hashed at the ingress: all but, per ingress replica's router, the request before it first said how it hashes
    # and the one after its replicas first reported their geometry.
    hashed_now, ingresses = _hashed_at_ingress(served)
    assert hashed_now - hashed_at_ingress >= 2 * len(TOPICS) - 2 * ingresses
