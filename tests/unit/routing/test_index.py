"""PrefixIndex: leading-block matching, LRU eviction per replica, bounded memory."""

from __future__ import annotations

import pytest

from routing.index import PrefixIndex


def test_match_counts_leading_blocks_only():
    idx = PrefixIndex(capacity_blocks=100)
    idx.insert("a", [1, 2, 3, 4])
    idx.insert("b", [1, 2])
    idx.insert("c", [2, 3, 4])  # holds later blocks but not the first: useless to vLLM
    assert idx.match([1, 2, 3, 9]) == {"a": 3, "b": 2}
    assert idx.match([9, 1]) == {}
    assert idx.match([]) == {}


def test_lru_eviction_bounds_each_replica():
    idx = PrefixIndex(capacity_blocks=3)
    idx.insert("a", [1, 2, 3])  # tail first: 3 is the oldest, the head 1 the most recent
    idx.insert("a", [2])  # touch 2
    idx.insert("a", [4])  # evicts 3, the prompt's tail, as vLLM would
    assert idx.blocks_held("a") == 3
    assert idx.match([1, 2, 3]) == {"a": 2}
    assert idx.match([3]) == {}
    idx.insert("b", range(100, 200))
    assert idx.size_blocks() == 6  # bounded by replicas x capacity whatever was inserted


def test_remove_and_drop_replica():
    idx = PrefixIndex(capacity_blocks=10)
    idx.insert("a", [1, 2, 3])
    idx.insert("b", [1, 2, 3])
    idx.remove("a", [2])
    assert idx.match([1, 2, 3]) == {"a": 1, "b": 3}
    idx.drop_replica("b")
    assert idx.match([1, 2, 3]) == {"a": 1}
    assert idx.replicas() == ["a"]
    idx.remove("zzz", [1])  # unknown replica: nothing happens


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        PrefixIndex(0)


def test_match_equals_the_naive_definition():
    import random

    rng = random.Random(3)
    idx = PrefixIndex(capacity_blocks=1000)
    for r in range(8):
        idx.insert(f"r{r}", range(rng.randrange(0, 40)))
    for _ in range(50):
        hashes = list(range(rng.randrange(0, 45)))
        naive = {}
        for r in range(8):
            depth = 0
            while depth < len(hashes) and f"r{r}" in idx._owners.get(hashes[depth], ()):
                depth += 1
            if depth:
                naive[f"r{r}"] = depth
        assert idx.match(hashes) == naive


def test_held_by_counts_one_replicas_leading_blocks():
    idx = PrefixIndex(100)
    idx.insert("r0", [1, 2, 3])
    idx.insert("r1", [1, 2])
    assert [idx.held_by("r0", [1, 2, 3, 4]), idx.held_by("r1", [1, 2, 3]), idx.held_by("r2", [1])] == [3, 2, 0]
    assert idx.held_by("r1", [1, 5, 2]) == 1  # leading blocks only
    assert all(idx.held_by(r, [1, 2, 3, 4]) == m for r, m in idx.match([1, 2, 3, 4]).items())
