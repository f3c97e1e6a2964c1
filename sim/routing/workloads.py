"""Synthetic workloads: sessions of turns whose prompts are random token ids, hashed as vLLM hashes them.

Every request is a turn of a session; a session's first turn arrives by a Poisson process (the run
sets the rate) and each later turn ``think_s`` after the previous one finished. The shapes:

* ``shared_prefix`` — vLLM's ``prefix_repetition``: ``groups`` random prefixes, each followed by fresh
  random suffixes; one-turn sessions, shuffled. Groups are equally popular (vLLM's shape), or Zipf
  distributed with exponent ``skew`` (group k gets a share ∝ 1/k^skew): real traffic has hot prefixes,
  which a router must spread over several replicas. The reusable working set is ``groups x prefix``
  tokens, so a target share of the cluster's KV sets ``groups``.
* ``multi_turn`` — chats: a system prompt every session shares, a per-session context, then turns of
  user message + re-rendered answer; each turn's prompt extends the previous one.
* ``no_shared_prefix`` — every prompt is fresh random tokens: nothing to reuse, only load to balance.

Hashes are computed once per workload with :func:`routing.hashing.block_hashes` (the router's own
function) and shared by every run of it; leading hashes that equal another prompt's are stored as the
same objects, which keeps tens of thousands of prompts in memory cheaply.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from contracts.engine_report import BlockGeometry
from routing.hashing import BlockHash, block_hashes

VOCAB = 262_144  # Gemma-4's vocabulary: token ids are drawn uniformly from it


@dataclass(frozen=True, slots=True)
class Turn:
    prompt_tokens: int
    block_hashes: tuple[BlockHash, ...]
    output_tokens: int
    tau: float  # DFlash acceptance length of this request, tokens per step
    think_s: float  # pause after the previous turn finished (0 for a first turn)


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    sessions: tuple[Session, ...]
    reusable_blocks: int  # distinct blocks some later request can reuse (the working set)

    @property
    def requests(self) -> int:
        return sum(len(s.turns) for s in self.sessions)

    @property
    def mean_prompt_tokens(self) -> float:
        return sum(t.prompt_tokens for s in self.sessions for t in s.turns) / self.requests

    @property
    def mean_output_tokens(self) -> float:
        return sum(t.output_tokens for s in self.sessions for t in s.turns) / self.requests

    @property
    def turns_per_session(self) -> float:
        return self.requests / len(self.sessions)


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def _extend(shared: tuple[BlockHash, ...], tokens: Sequence[int], block_size: int) -> tuple[BlockHash, ...]:
    """Hashes of ``tokens``, reusing ``shared``'s objects for the leading blocks they have in common."""
    full = block_hashes(tokens, BlockGeometry.uniform(block_size))
    return shared + tuple(full[len(shared) :])


def shared_prefix(
    groups: int,
    requests: int,
    prefix_tokens: int,
    suffix_tokens: int,
    output_tokens: int,
    tau_range: tuple[float, float],
    seed: int,
    skew: float = 0.0,
    block_size: int = 16,
) -> Workload:
    """``requests`` prompts (at least one per group) over ``groups`` prefixes."""
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** skew for k in range(groups)]
    scale = requests / sum(weights)
    sessions = []
    prefix_blocks = 0
    for g in range(groups):
        prefix = _tokens(rng, prefix_tokens)
        shared = tuple(block_hashes(prefix, BlockGeometry.uniform(block_size)))
        prefix_blocks += len(shared)
        for p in range(max(1, round(weights[g] * scale))):
            hashes = _extend(shared, prefix + _tokens(rng, suffix_tokens), block_size)
            turn = Turn(prefix_tokens + suffix_tokens, hashes, output_tokens, rng.uniform(*tau_range), 0.0)
            sessions.append(Session(f"g{g}p{p}", (turn,)))
    rng.shuffle(sessions)
    return Workload("shared_prefix", tuple(sessions), prefix_blocks)


def multi_turn(
    sessions: int,
    turns: int,
    system_tokens: int,
    context_tokens: int,
    user_tokens: int,
    output_tokens: int,
    think_mean_s: float,
    tau_range: tuple[float, float],
    seed: int,
    block_size: int = 16,
) -> Workload:
    """Each turn's prompt: system + context + (user + answer) per earlier turn + this turn's user message.

    An earlier answer appears re-rendered (fresh tokens of the output's length), not as generated.
    """
    rng = random.Random(seed)
    system = _tokens(rng, system_tokens)
    system_hashes = tuple(block_hashes(system, BlockGeometry.uniform(block_size)))
    out = []
    reusable = len(system_hashes)
    for s in range(sessions):
        tokens = system + _tokens(rng, context_tokens)
        hashes = system_hashes
        session_turns = []
        for k in range(turns):
            tokens = tokens + _tokens(rng, user_tokens)
            hashes = _extend(hashes, tokens, block_size)
            think = rng.expovariate(1.0 / think_mean_s) if k else 0.0
            session_turns.append(Turn(len(tokens), hashes, output_tokens, rng.uniform(*tau_range), think))
            tokens = tokens + _tokens(rng, output_tokens)
        reusable += len(session_turns[-2].block_hashes) - len(system_hashes) if turns > 1 else 0
        out.append(Session(f"s{s}", tuple(session_turns)))
    return Workload("multi_turn", tuple(out), reusable)


def no_shared_prefix(
    requests: int,
    prompt_tokens: int,
    output_tokens: int,
    tau_range: tuple[float, float],
    seed: int,
    block_size: int = 16,
) -> Workload:
    rng = random.Random(seed)
    sessions = tuple(
        Session(
            f"u{i}",
            (
                Turn(
                    prompt_tokens,
                    tuple(block_hashes(_tokens(rng, prompt_tokens), BlockGeometry.uniform(block_size))),
                    output_tokens,
                    rng.uniform(*tau_range),
                    0.0,
                ),
            ),
        )
        for i in range(requests)
    )
    return Workload("no_shared_prefix", sessions, 0)
