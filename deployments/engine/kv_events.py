"""Precise mode, engine side: vLLM's KV cache events -> routing events -> the model's Redis stream.

vLLM's engine core publishes a ``KVEventBatch`` per scheduler step on a ZMQ PUB socket
(``--kv-events-config``). This relay, a thread inside the engine replica, subscribes on a local IPC
socket, keeps the events of the one KV cache group that decides reuse, and appends them to Redis.

Which group: Gemma-4 has sliding-window and full-attention layers, so vLLM keeps one KV group per
layer kind (the drafter's layers join a group of their own kind). A sliding-window group frees blocks
that fall out of its window while the request still runs, so its events say nothing about whether a
prefix can be reused. The full-attention group must hold *every* block of a prefix for vLLM to reuse
it (``HybridKVCacheCoordinator`` checks it first and trims the other groups' hits to it), and its
blocks leave only by LRU eviction: it is the group that decides reuse, and the one we follow (the
lowest-numbered full-attention group; all groups hash the same tokens alike).

The relay also keeps the replica's held blocks, so that when Redis comes back after an outage (or
for routers starting late) it can publish a snapshot instead of the events that were lost.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import redis

from contracts.engine_report import BlockGeometry
from deployments.kv_stream import EventStreamWriter
from routing.events import BlocksRemoved, BlocksStored, KvEvent, ReplicaCleared, ReplicaSnapshot
from routing.hashing import DEFAULT_NONE_HASH_SEED, BlockHash, infer_hash_block_size

logger = logging.getLogger(__name__)

FOLLOWED_KINDS = frozenset({"full_attention", "mla_attention"})
_POLL_MS = 500
_RETRY_S = 1.0


def kv_events_config(endpoint: str) -> dict[str, Any]:
    """vLLM's ``--kv-events-config`` for a publisher this relay can subscribe to."""
    return {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint}


class GroupFilter:
    """Turns vLLM events into routing events for the followed KV group; tracks what the replica holds."""

    def __init__(self, replica_id: str, none_hash_seed: str = DEFAULT_NONE_HASH_SEED) -> None:
        self.replica_id = replica_id
        self._seed = none_hash_seed  # the engine's (routing/hashing.py), to recognise its hashes
        self.group: int | None = None  # learnt from the first full-attention store event
        # (hashing block size, the group's block size), learnt from its first event starting at token 0
        self._block_sizes: tuple[int, int] | None = None
        self._all_group_block_sizes: dict[int, int] = {}  # every group's, for the cache-hit alignment
        self._unaligned_store = False  # a store not on the LCM boundary: vLLM's fine-grained hits are on
        self.held: dict[BlockHash, None] = {}  # insertion-ordered: oldest first, like an LRU

    def convert(self, vllm_events: list[Any]) -> list[KvEvent]:
        from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

        out: list[KvEvent] = []
        for ev in vllm_events:
            if isinstance(ev, AllBlocksCleared):
                self.held.clear()
                out.append(ReplicaCleared(self.replica_id))
            elif isinstance(ev, BlockStored):
                if ev.group_idx is not None:
                    self._all_group_block_sizes[ev.group_idx] = ev.block_size
                if self.group is None and ev.kv_cache_spec_kind in FOLLOWED_KINDS:
                    self.group = ev.group_idx
                    logger.info("following KV group %s (%s)", ev.group_idx, ev.kv_cache_spec_kind)
                if ev.group_idx != self.group or ev.lora_name is not None:
                    continue  # another group, or LoRA blocks (routers hash base-model prompts only)
                hashes = tuple(BlockHash(int(h)) for h in ev.block_hashes)
                if ev.parent_block_hash is None:
                    if self._block_sizes is None:
                        self._calibrate(ev.token_ids, ev.block_size, hashes)
                    self._unaligned_store |= len(ev.token_ids) % self._lcm_block_size() != 0
                for h in hashes:
                    self.held.pop(h, None)
                    self.held[h] = None
                out.append(BlocksStored(self.replica_id, hashes))
            elif isinstance(ev, BlockRemoved):
                if self.group is None or ev.group_idx != self.group:
                    continue
                hashes = tuple(BlockHash(int(h)) for h in ev.block_hashes)
                for h in hashes:
                    self.held.pop(h, None)
                out.append(BlocksRemoved(self.replica_id, hashes))
        return out

    def _lcm_block_size(self) -> int:
        return math.lcm(*self._all_group_block_sizes.values()) if self._all_group_block_sizes else 1

    @property
    def geometry(self) -> BlockGeometry | None:
        """Hashing block, followed group's block and cache-hit alignment, once learnt.

        vLLM stores and reuses a hybrid model's prompt in units of the LCM of its groups' block sizes
        (``scheduler_block_size``), or of the hashing block when its fine-grained hits are on.
        """
        if self._block_sizes is None:
            return None
        hash_block, group_block = self._block_sizes
        align = hash_block if self._unaligned_store else max(group_block, self._lcm_block_size())
        return BlockGeometry(hash_block, group_block, align)

    def _calibrate(self, token_ids: list[int], group_block_size: int, hashes: tuple[BlockHash, ...]) -> None:
        hash_block_size = infer_hash_block_size(token_ids, group_block_size, hashes, self._seed)
        if hash_block_size is None:
            logger.warning("KV event hashes match no hashing block size; routers keep the configured one")
            return
        self._block_sizes = (hash_block_size, group_block_size)
        logger.info("KV group pages %d-token blocks named by %d-token hashes", group_block_size, hash_block_size)

    def snapshot(self) -> ReplicaSnapshot:
        return ReplicaSnapshot(self.replica_id, tuple(self.held))


class KvEventRelay:
    """Subscribes before the engine starts (ZMQ connects retry until the publisher binds)."""

    def __init__(
        self, replica_id: str, endpoint: str, writer: EventStreamWriter, snapshot_period_s: float, none_hash_seed: str
    ) -> None:
        import zmq

        self._filter = GroupFilter(replica_id, none_hash_seed)
        self._writer = writer
        self._snapshot_period_s = snapshot_period_s
        self._sub = zmq.Context.instance().socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.setsockopt(zmq.RCVHWM, 0)  # never drop a batch: a lost removal would leave a phantom block
        self._sub.connect(endpoint)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="kv-event-relay", daemon=True)
        self._thread.start()

    @property
    def geometry(self) -> tuple[int, int, int] | None:
        """See :attr:`GroupFilter.geometry`."""
        return self._filter.geometry

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2 * _POLL_MS / 1000)
        self._sub.close(linger=0)
        self._writer.close()

    def _run(self) -> None:
        import msgspec
        from vllm.distributed.kv_events import KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        last_id = "0-0"
        in_sync = False  # Redis has everything we hold: start (and restart) with a snapshot
        next_snapshot = 0.0
        pending: list[KvEvent] = []
        while self._running:
            if self._sub.poll(_POLL_MS):
                _topic, _seq, payload = self._sub.recv_multipart()
                try:
                    pending += self._filter.convert(decoder.decode(payload).events)
                except msgspec.DecodeError:
                    logger.warning("undecodable KV event batch dropped")
            now = time.monotonic()
            try:
                if not in_sync:
                    # Lost events are replaced by what we hold now: a snapshot in the stream for
                    # routers already following, and under its key for routers starting later.
                    pending.clear()
                    snap = self._filter.snapshot()
                    last_id = self._writer.append([snap])
                    self._writer.write_snapshot(snap, last_id)
                    in_sync, next_snapshot = True, now + self._snapshot_period_s
                    logger.info("KV events in sync with Redis (%d blocks held)", len(snap.hashes))
                if pending:
                    last_id = self._writer.append(pending)
                    pending.clear()
                if now >= next_snapshot:
                    self._writer.write_snapshot(self._filter.snapshot(), last_id)
                    next_snapshot = now + self._snapshot_period_s
            except redis.RedisError as exc:
                if in_sync:
                    logger.warning("Redis unreachable (%r): KV events held back until it returns", exc)
                in_sync = False
                time.sleep(_RETRY_S)
