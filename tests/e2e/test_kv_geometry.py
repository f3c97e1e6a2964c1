"""The tiny targets cache prompts the way gemma-4-26B-A4B-it does: fine-grained, so chats hit on CPU too.

The real model's full-attention layers store half a sliding layer's bytes per token, so vLLM's hybrid
allocator gives them blocks twice the sliding ones; the tiny targets keep those proportions
(tools/tiny_models.py), which on CPU makes every KV group's block 32 or 64 tokens and the cache-hit
alignment 64 (it was 512 with the first tiny targets: a chat shorter than ~1,000 tokens never hit).
Counted by the engines themselves: vLLM's prefix-cache counters and its KV events.
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.e2e.served import Served
from tools.e2e_app import AR_MODEL, DFLASH_MODEL

pytestmark = pytest.mark.e2e

MAX_ALIGN_TOKENS = 64
QUESTION = (
    "A farmer has 17 sheep, buys 5 more and sells 8. Each sheep eats 2 kg of hay a day. "
    "How much hay does the farmer need for a week? Explain each step."
)


def _hits(served: Served, model: str) -> tuple[float, float]:
    """(prefix-cache hit tokens, queried tokens) summed over the model's replicas, from /metrics."""
    text = httpx.get(served.base_url + "/metrics", timeout=60).text

    def total(name: str) -> float:
        pattern = re.compile(rf'^{name}\{{[^}}]*model_name="{re.escape(model)}"[^}}]*\}} (\S+)$', re.M)
        return sum(float(v) for v in pattern.findall(text))

    return total("vllm:prefix_cache_hits_total"), total("vllm:prefix_cache_queries_total")


@pytest.mark.parametrize("model", [DFLASH_MODEL, AR_MODEL])
def test_second_turn_hits_all_but_the_last_unit_of_the_first(served: Served, model: str):
    """Turn 2 reuses turn 1's prompt and answer from the cache, in 64-token units, all but the last.

    Replayed as a client that keeps the conversation's token ids (Gemma-4's chat template re-renders an
    answer without the thinking channel its generation prompt opened, so a re-rendered history diverges
    there). vLLM caches the ``len - 1`` tokens whose KV turn 1 computed in whole units; with the engines'
    dense sliding-window retention (``engine.prefix_cache_retention``) the answer's units stay reusable
    too. Without a drafter turn 2 hits every whole unit; with DFlash vLLM 0.32 drops the last matched unit
    (DFlash counts as EAGLE), and one more when turn 1 ended inside a speculative step (docs/known-issues.md).
    """
    from transformers import AutoTokenizer

    client = openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=300)
    tokenizer = AutoTokenizer.from_pretrained(served.config.models[0].target)
    prompt = tokenizer.encode(QUESTION * 4)  # ~170 tokens: a hit of a few units, not one of 512
    first = client.completions.create(
        model=model, prompt=prompt, max_tokens=96, temperature=0, extra_body={"return_token_ids": True}
    )
    turn1 = prompt + list(first.choices[0].token_ids)
    turn2 = turn1 + tokenizer.encode(" And for a month?", add_special_tokens=False)

    hits0, queries0 = _hits(served, model)
    client.completions.create(model=model, prompt=turn2, max_tokens=4, temperature=0)
    hits1, queries1 = _hits(served, model)
    assert queries1 - queries0 == len(turn2)
    units = (len(turn1) - 1) // MAX_ALIGN_TOKENS
    assert units >= 4, len(turn1)
    hit_units = (hits1 - hits0) / MAX_ALIGN_TOKENS
    if model == AR_MODEL:
        assert hit_units == units, (len(turn1), hits1 - hits0)
    else:
        assert units - 2 <= hit_units <= units - 1, (len(turn1), hits1 - hits0)


def test_engines_cache_in_units_of_at_most_64_tokens(served: Served):
    """The alignment the precise router learns from the engine's KV events (LCM of every group's block)."""
    # The test above has made every AR replica store blocks of all its KV groups by now (or does it here).
    client = openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=300)
    for _ in range(2):
        client.completions.create(model=AR_MODEL, prompt=QUESTION * 3, max_tokens=2, temperature=0)
    aligns = {r: s.geometry.align_tokens for r, s in served.replica_reports(AR_MODEL).items()}
    assert aligns and all(0 < a <= MAX_ALIGN_TOKENS for a in aligns.values()), aligns
