"""One model's shared routing stream in Redis: engines' KV events and routers' decisions.

Layout under the model's key prefix ``P`` (``dflash:<app>:<model>``):

* ``P:events`` — a Redis Stream; each entry ``{"e": <routing.events wire form>, "src": "engine" | "router"}``
  (routers apply both; ``src`` is for people and tests reading the stream), trimmed to about
  ``maxlen`` entries so Redis memory stays bounded whatever the traffic;
* ``P:snap:<replica>`` — ``{"id": <last stream id applied>, "e": <ReplicaSnapshot>}``, rewritten by each
  engine replica every ``snapshot_period_s`` and expiring after three periods, so a router that starts
  late (or after an outage) rebuilds the index without replaying the whole stream, and a dead
  replica's snapshot goes away on its own.

Redis is never on a request's path. Engines keep their own block set while Redis is away and
republish it as a snapshot when it returns; routers keep routing on what they know, retry with
backoff and resynchronise from the snapshots once Redis answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import redis
import redis.asyncio as aioredis

from config import KvStreamSettings
from deployments.circuit_breaker import CircuitBreaker, CircuitOpen
from deployments.error_kind import error_kind
from deployments.redis_auth import redis_password
from routing.events import KvEvent, ReplicaSnapshot, decode, encode

logger = logging.getLogger(__name__)

_TIMEOUT_S = 2.0
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)
_READ_BATCH = 1000
_READ_BLOCK_MS = 1000
# Routing records shared at once by one router; past it a record is not shared (the local index has it). With
# a Redis that stopped answering, each waits out its timeout: the cap bounds the tasks and connections held.
_PUBLISH_IN_FLIGHT = 64
_BREAKER_FAILURES, _BREAKER_OPEN_S = 3, 5.0

StreamId = tuple[int, int]


def _stream_id(raw: bytes | str) -> StreamId:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _format_id(sid: StreamId) -> str:
    return f"{sid[0]}-{sid[1]}"


class _Keys:
    def __init__(self, settings: KvStreamSettings) -> None:
        self.stream = f"{settings.key_prefix}:events"
        self.snapshot_prefix = f"{settings.key_prefix}:snap:"
        self.maxlen = settings.maxlen
        self.snapshot_ttl_s = max(1, round(3 * settings.snapshot_period_s))

    def snapshot(self, replica_id: str) -> str:
        return self.snapshot_prefix + replica_id


class EventStreamWriter:
    """An engine replica's side: appends its events and writes its snapshot (blocking; relay thread)."""

    def __init__(self, settings: KvStreamSettings) -> None:
        self._keys = _Keys(settings)
        self._redis = redis.Redis.from_url(
            settings.redis_url,
            password=redis_password(settings.redis_password_file),
            socket_timeout=_TIMEOUT_S,
            socket_connect_timeout=_TIMEOUT_S,
        )

    def append(self, events: list[KvEvent]) -> str:
        """Append in order; returns the last entry's id. Raises ``redis.RedisError`` when Redis is away."""
        pipe = self._redis.pipeline(transaction=False)
        for event in events:
            pipe.xadd(
                self._keys.stream, {"e": encode(event), "src": "engine"}, maxlen=self._keys.maxlen, approximate=True
            )
        ids = pipe.execute()
        return ids[-1].decode()

    def write_snapshot(self, snapshot: ReplicaSnapshot, last_id: str) -> None:
        body = json.dumps({"id": last_id, "e": encode(snapshot)})
        self._redis.set(self._keys.snapshot(snapshot.replica_id), body, ex=self._keys.snapshot_ttl_s)

    def close(self) -> None:
        self._redis.close()


class StreamFollower:
    """A router's side: applies every event in the stream to its policy, and publishes its own decisions.

    ``apply`` runs on the router's event loop, the loop that also makes routing decisions, so the
    index needs no lock.
    """

    def __init__(self, settings: KvStreamSettings, apply: Callable[[KvEvent], None]) -> None:
        self._keys = _Keys(settings)
        self._url = settings.redis_url
        self._password_file = settings.redis_password_file
        self._apply = apply
        self._redis: aioredis.Redis | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._publishing = 0
        self.connected = False
        self.breaker = CircuitBreaker(_BREAKER_FAILURES, _BREAKER_OPEN_S)  # of publish: fail fast, hold nothing
        self.not_shared = 0  # records dropped without trying Redis (disconnected, too many in flight, breaker open)

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kv-stream-follower")

    async def stop(self) -> None:
        """Stop following, within a few seconds whatever Redis does.

        A cancellation that lands as a socket timeout fires can be swallowed on the way through
        redis-py's reader (Python 3.11's ``asyncio.timeout``), so the loops also check a flag each
        turn, and the cancel is repeated until the task has ended.
        """
        self._stopping = True
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=_TIMEOUT_S)
        if self._redis is not None:
            await self._redis.aclose()

    async def publish(self, event: KvEvent) -> None:
        """Share a routing record with sibling routers; best effort (the local index already has it).

        Called once per routed request, never awaited by it; at most ``_PUBLISH_IN_FLIGHT`` at once, and
        not at all while the breaker is open after consecutive failures (a blackholed Redis).
        """
        if not self.connected or self._redis is None or self._publishing >= _PUBLISH_IN_FLIGHT:
            self.not_shared += 1
            return
        client = self._redis
        record = {"e": encode(event), "src": "router"}
        self._publishing += 1
        try:
            await self.breaker.guard(
                lambda: client.xadd(self._keys.stream, record, maxlen=self._keys.maxlen, approximate=True),
                (redis.RedisError, OSError),
                self._log_opened,
            )
        except CircuitOpen:
            self.not_shared += 1
        except (redis.RedisError, OSError):
            pass  # counted by the breaker; logged once when it opened
        finally:
            self._publishing -= 1

    @staticmethod
    def _log_opened(exc: BaseException) -> None:
        logger.warning("routing records not shared for %g s: %s", _BREAKER_OPEN_S, error_kind(exc))

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                self._redis = self._redis or aioredis.Redis.from_url(
                    self._url,
                    password=redis_password(self._password_file),
                    socket_timeout=_TIMEOUT_S + _READ_BLOCK_MS / 1000,
                    socket_connect_timeout=_TIMEOUT_S,
                )
                cursor, skip_until = await self._resync()
                if failures:
                    logger.info("routing stream %s reachable again; index resynchronised", self._keys.stream)
                failures = 0
                self.connected = True
                await self._follow(cursor, skip_until)
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                self.connected = False
                if failures == 0:
                    logger.warning("routing stream unreachable (%r); routing on local knowledge", exc)
                await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S) - 1)])
                failures += 1

    async def _resync(self) -> tuple[StreamId, dict[str, StreamId]]:
        """Load every replica's snapshot; resume the stream from the oldest of them.

        Returns the cursor and, per replica, the id up to which its snapshot already covers its events.
        """
        assert self._redis is not None
        skip_until: dict[str, StreamId] = {}
        async for key in self._redis.scan_iter(match=self._keys.snapshot_prefix + "*", count=100):
            raw = await self._redis.get(key)
            if raw is None:
                continue
            try:
                body = json.loads(raw)
                snap = decode(body["e"])
                sid = _stream_id(body["id"])
            except (ValueError, KeyError, TypeError):
                logger.warning("ignoring malformed snapshot %r", key)
                continue
            self._apply(snap)
            skip_until[snap.replica_id] = sid
        cursor = min(skip_until.values(), default=(0, 0))
        return cursor, skip_until

    async def _follow(self, cursor: StreamId, skip_until: dict[str, StreamId]) -> None:
        assert self._redis is not None
        while not self._stopping:
            reply = await self._redis.xread(
                {self._keys.stream: _format_id(cursor)}, count=_READ_BATCH, block=_READ_BLOCK_MS
            )
            for _stream, entries in reply or ():
                for raw_id, fields in entries:
                    cursor = _stream_id(raw_id)
                    try:
                        event = decode(fields[b"e"])
                    except (ValueError, KeyError, TypeError):
                        logger.warning("ignoring malformed stream entry %s", raw_id)
                        continue
                    if cursor <= skip_until.get(event.replica_id, (-1, -1)):
                        continue  # already in that replica's snapshot
                    self._apply(event)
