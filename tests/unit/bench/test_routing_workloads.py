"""The routing benchmark's sessions: real data within the engine's budget, new text for every seed."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench.routing_real import QUICK
from bench.routing_workloads import HELD_OUT_WORKLOADS, TUNING_WORKLOADS, sessions, sharegpt_records
from training.gemma4_layout import load_tokenizer

SIZES = replace(QUICK, groups=3, prefix_words=50, sharegpt_sessions=6, agent_sessions=6)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _tokens(tokenizer, session) -> int:
    texts = [session.system or "", *session.turns]
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts)


@pytest.mark.parametrize("workload", HELD_OUT_WORKLOADS)
def test_held_out_sessions_cross_the_cache_unit_and_fit_the_engine(tokenizer, workload):
    built = sessions(workload, SIZES, 1, tokenizer)
    assert len(built) == getattr(SIZES, f"{workload}_sessions")
    for s in built:
        assert len(s.turns) >= 2
        assert SIZES.session_min_tokens <= _tokens(tokenizer, s) <= SIZES.session_max_tokens


@pytest.mark.parametrize("workload", TUNING_WORKLOADS + HELD_OUT_WORKLOADS)
def test_no_two_seeds_share_a_first_prompt(tokenizer, workload):
    def firsts(seed: int) -> set[str]:
        return {(s.system or "") + s.turns[0] for s in sessions(workload, SIZES, seed, tokenizer)}

    assert not firsts(1) & firsts(2)


def test_agent_sessions_share_their_seed_s_system_prompts(tokenizer):
    systems = [s.system for s in sessions("agent", SIZES, 1, tokenizer)]
    assert len(set(systems)) < len(systems) and all(s.startswith("Workspace 1.") for s in systems)


def test_sharegpt_reads_every_whole_record_of_the_truncated_file():
    records = sharegpt_records()
    assert len(records) == 17671 and all(r["conversations"] for r in records[-3:])
