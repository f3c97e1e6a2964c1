"""The engine-side relay's translation of vLLM KV events: which group it follows, what it learns."""

from __future__ import annotations

from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

from contracts.engine_report import BlockGeometry
from deployments.engine.kv_events import GroupFilter
from routing.events import BlocksRemoved, BlocksStored, ReplicaCleared
from routing.hashing import block_hashes

TOKENS = list(range(5000, 6100))  # 1,100 tokens: two 512-token cache units


def _stored(group: int, kind: str, block_size: int, hashes: list[int], tokens: list[int], parent: int | None = None):
    return BlockStored(
        block_hashes=hashes,
        parent_block_hash=parent,
        token_ids=tokens,
        block_size=block_size,
        lora_id=None,
        medium="GPU",
        lora_name=None,
        group_idx=group,
        kv_cache_spec_kind=kind,
    )


def _prompt_events() -> list:
    """What vLLM emits for one prompt on the tiny Gemma-4: a sliding group (512-token pages) and a full one."""
    cached = TOKENS[:1024]
    full = block_hashes(TOKENS, BlockGeometry(32, 32, 1024))
    sliding = block_hashes(TOKENS, BlockGeometry(32, 512, 1024))
    return [
        _stored(0, "sliding_window", 512, sliding, cached),
        _stored(1, "full_attention", 32, full, cached),
    ]


def test_follows_the_full_attention_group_and_learns_the_geometry():
    f = GroupFilter("r1")
    assert f.geometry is None
    out = f.convert(_prompt_events())
    assert out == [BlocksStored("r1", tuple(block_hashes(TOKENS, BlockGeometry(32, 32, 1024))))]
    assert f.group == 1
    assert f.geometry == BlockGeometry(32, 32, 512)  # hashing block, group block, LCM of the groups' blocks


def test_removals_of_other_groups_are_ignored_and_clears_forget_everything():
    f = GroupFilter("r1")
    f.convert(_prompt_events())
    full = block_hashes(TOKENS, BlockGeometry(32, 32, 1024))
    sliding = block_hashes(TOKENS, BlockGeometry(32, 512, 1024))
    out = f.convert(
        [
            BlockRemoved(block_hashes=sliding, medium="GPU", group_idx=0),  # out of the window: still reusable
            BlockRemoved(block_hashes=full[-4:], medium="GPU", group_idx=1),  # evicted
        ]
    )
    assert out == [BlocksRemoved("r1", tuple(full[-4:]))]
    assert f.snapshot().hashes == tuple(full[:-4])
    assert f.convert([AllBlocksCleared()]) == [ReplicaCleared("r1")]
    assert f.snapshot().hashes == ()


def test_lora_blocks_are_not_indexed():
    f = GroupFilter("r1")
    f.convert(_prompt_events())
    lora = _stored(1, "full_attention", 32, [1, 2], TOKENS[:64])
    lora.lora_name = "adapter"
    assert f.convert([lora]) == []
