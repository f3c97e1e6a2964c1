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
    idx.insert("a", [1, 2, 3])
    idx.insert("a", [1])  # touch 1: now 2 is the oldest
    idx.insert("a", [4])
    assert idx.blocks_held("a") == 3
    assert idx.match([1]) == {"a": 1}
    assert idx.match([2]) == {}
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
