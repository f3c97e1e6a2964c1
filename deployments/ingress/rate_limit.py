"""Token buckets per API key, kept in Redis by one Lua script so every ingress replica shares them.

Two buckets per key use it: requests (one token a request) and the token budget (a request's prompt and
output tokens). The script refills the bucket from the time elapsed (Redis's own clock, so ingress
clocks never disagree), takes ``cost`` if the bucket holds it, and otherwise says how long until it
will: the ingress answers 429 with that as ``Retry-After``. A negative cost gives tokens back (what a
finished request reserved and did not spend), never past the bucket's size. Atomic in Redis, one round
trip per call; an idle bucket expires once it would be full again, so Redis holds buckets only for
active keys.
"""

from __future__ import annotations

import math

from redis.asyncio import Redis

TOKEN_BUCKET_LUA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or burst
local ts = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = math.min(burst, tokens - cost)
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


class TokenBucket:
    """The shared bucket script, bound to one Redis client."""

    def __init__(self, client: Redis) -> None:
        self._script = client.register_script(TOKEN_BUCKET_LUA)

    async def take(self, key: str, rate_per_s: float, burst: int, cost: int = 1) -> int | None:
        """None when ``cost`` tokens were taken, else the whole seconds to wait (for ``Retry-After``, at least 1).

        A ``cost`` above ``burst`` never fits: the caller refuses such a request before asking. Raises
        ``redis.RedisError`` when Redis cannot be reached (the caller applies its fail mode)."""
        allowed, wait = await self._script(keys=[key], args=[rate_per_s, burst, cost])
        if int(allowed):
            return None
        return max(1, math.ceil(float(wait)))

    async def give_back(self, key: str, rate_per_s: float, burst: int, tokens: int) -> None:
        """Return ``tokens`` taken earlier and not spent (the bucket never holds more than ``burst``)."""
        if tokens > 0:
            await self._script(keys=[key], args=[rate_per_s, burst, -tokens])
