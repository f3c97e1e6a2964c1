"""The pure router fed by the real routing stream (deployments/kv_stream.py) in a real redis-server.

A router that starts late rebuilds its index from the replicas' snapshots and the stream after them; a
replica scaled down is forgotten even though this router only heard of it through Redis, and a sibling's
late record of it does not bring it back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from config import KvStreamSettings
from contracts.engine_report import BlockGeometry
from deployments.kv_stream import EventStreamWriter, StreamFollower
from routing.events import BlocksRemoved, BlocksStored, ReplicaSnapshot
from routing.hashing import block_hashes
from routing.policies import PrefixPolicy
from routing.router import Router
from tools.redis_server import RedisServer

G = BlockGeometry.uniform(16)
A = tuple(block_hashes(range(0, 160), G))
B = tuple(block_hashes(range(5000, 5160), G))


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


def test_late_router_resyncs_then_forgets_a_replica_that_left(redis_server: RedisServer):
    settings = KvStreamSettings(
        redis_url=redis_server.url, key_prefix="dflash:test-router-stream:m", maxlen=1000, snapshot_period_s=30
    )
    writer = EventStreamWriter(settings)
    last = writer.append([BlocksStored("b", B)])
    writer.write_snapshot(ReplicaSnapshot("b", B), last)  # b's snapshot covers its events so far
    writer.append([BlocksStored("a", A), BlocksRemoved("a", A[-2:])])  # after every snapshot: replayed

    async def scenario() -> None:
        router = Router(PrefixPolicy())
        index = router.policy.index
        follower = StreamFollower(settings, router.observe)
        follower.start()
        try:
            await _until(lambda: index.blocks_held("a") == len(A) - 2 and index.blocks_held("b") == len(B))
            assert router.update_replicas(["a"]) == ["b"]  # b scaled down; this router never routed to it
            assert index.blocks_held("b") == 0
            await follower.publish(BlocksStored("b", B))  # a sibling that had not heard yet
            await follower.publish(BlocksStored("a", B))  # ... followed by a record the router must apply
            await _until(lambda: index.blocks_held("a") == len(A) - 2 + len(B))
            assert index.blocks_held("b") == 0
        finally:
            await follower.stop()

    try:
        asyncio.run(scenario())
    finally:
        writer.close()


def test_a_blackholed_redis_holds_a_bounded_number_of_records_and_then_none(redis_server: RedisServer):
    """SIGSTOP: every record sent waits out the client timeout; at most the cap wait at once (the rest are not
    shared), and once those failed the breaker is open and records are dropped without trying Redis."""
    from deployments.kv_stream import _PUBLISH_IN_FLIGHT

    settings = KvStreamSettings(
        redis_url=redis_server.url, key_prefix="dflash:test-router-stream:blackhole", maxlen=1000, snapshot_period_s=30
    )

    async def scenario() -> None:
        follower = StreamFollower(settings, lambda _: None)
        follower.start()
        try:
            await _until(lambda: follower.connected)
            redis_server.pause()
            try:
                await asyncio.gather(*(follower.publish(BlocksStored("a", A)) for _ in range(3 * _PUBLISH_IN_FLIGHT)))
                assert follower.not_shared == 2 * _PUBLISH_IN_FLIGHT  # dropped at once: the cap was reached
                assert follower.breaker.state == "open"  # the ones in flight all timed out
                rejected = follower.breaker.rejected
                follower.connected = True  # as if the reader had not noticed yet: the breaker alone decides
                await follower.publish(BlocksStored("a", A))
                assert follower.breaker.rejected == rejected + 1
            finally:
                redis_server.resume()
        finally:
            await follower.stop()

    asyncio.run(scenario())
