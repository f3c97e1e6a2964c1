"""Who may use the endpoint, how fast and how much: API key check, per-key rate limit and token budget.

A key is accepted when its SHA-256 digest is in ``auth.api_key_sha256`` (no I/O) or, with
``auth.redis_keys``, when Redis holds a record for it (``deployments.ingress.api_keys``; a verified key is
trusted for ``auth.key_cache_s``). Each accepted key then takes a token from its request bucket in Redis
(``deployments.ingress.rate_limit``) when a rate limit applies to it. Requests count alike whatever they
ask for, so a key with a token budget also reserves a validated request's bound in tokens from a
second bucket (:meth:`Access.reserve`) and gets back what the request did not spend when it ends
(:meth:`Reservation.settle`).

When Redis cannot be reached, ``auth.on_redis_error`` decides (docs/reliability.md):

* ``closed`` — a request that needs Redis (a Redis key not in the cache, any rate-limited key) is
  answered 503 with ``Retry-After``: nobody gets past a limit that cannot be checked;
* ``open`` — such a request is admitted without its rate limit and token budget, and Redis keys this
  replica verified in the last ``auth.fail_open_key_max_age_s`` stay accepted (so a key revoked during
  an outage stops working within that time); an unknown key is still refused. Availability over
  strictness, for a bounded time.

Keys are never logged: only digests (and only their first 8 hex digits) appear in log lines.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import redis
import redis.asyncio as aioredis

from config import AuthConfig
from contracts.redis_keys import RedisKeys
from deployments.circuit_breaker import CircuitBreaker, CircuitOpen
from deployments.error_kind import error_kind
from deployments.ingress import api_keys
from deployments.ingress.errors import ApiError
from deployments.ingress.rate_limit import TokenBucket
from deployments.redis_auth import redis_password

logger = logging.getLogger(__name__)

_CACHE_ENTRIES = 10_000
T = TypeVar("T")


# What "Redis is unavailable" looks like to the callers of ``_guarded``.
_UNAVAILABLE = (redis.RedisError, CircuitOpen)


@dataclass(frozen=True, slots=True)
class Caller:
    """Whom :meth:`Access.check` let in: a key's digest and its Redis record (None: a static key, or no auth)."""

    key_digest: str | None = None
    record: api_keys.KeyRecord | None = None


@dataclass(frozen=True, slots=True)
class Budget:
    """A token budget that applies to one caller: its bucket, refill rate and size."""

    bucket_key: str
    tokens_per_s: float
    burst: int


class Reservation:
    """Tokens one request took from its key's budget; :meth:`settle` gives back what it did not spend, once."""

    def __init__(self, access: Access, budget: Budget, reserved: int) -> None:
        self._access: Access | None = access
        self._budget = budget
        self.reserved = reserved

    async def settle(self, spent: int | None) -> None:
        """``spent``: the request's prompt + completion tokens by its usage; None (unknown): nothing comes back.

        Never raises: a refund Redis did not take is the key's loss, not the response's failure.
        """
        access, self._access = self._access, None
        if access is not None and spent is not None and spent < self.reserved:
            await access.give_back(self._budget, self.reserved - spent)


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, or None."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


class Access:
    """One per ingress replica. :meth:`check` raises :class:`ApiError` (401, 429 or 503) or returns."""

    def __init__(
        self, auth: AuthConfig, redis_url: str | None, app_name: str, redis_password_file: str | None = None
    ) -> None:
        self._auth = auth
        self._static = frozenset(auth.api_key_sha256)
        self._redis_url = redis_url
        self._redis_password_file = redis_password_file
        self._keys = RedisKeys(app_name)
        self._client: aioredis.Redis | None = None
        self._bucket: TokenBucket | None = None
        # digest -> (verified at, record): keys verified in Redis, newest last.
        self._verified: OrderedDict[str, tuple[float, api_keys.KeyRecord]] = OrderedDict()
        self.breaker = CircuitBreaker(auth.redis_breaker_failures, auth.redis_breaker_open_s)

    def _redis(self) -> tuple[aioredis.Redis, TokenBucket]:
        # Made on first use, inside the replica's event loop that will use it.
        if self._client is None or self._bucket is None:
            assert self._redis_url is not None  # AppConfig requires it for redis_keys and rate limits
            self._client = aioredis.Redis.from_url(
                self._redis_url,
                password=redis_password(self._redis_password_file),
                socket_timeout=self._auth.redis_timeout_s,
                socket_connect_timeout=self._auth.redis_timeout_s,
            )
            self._bucket = TokenBucket(self._client)
        return self._client, self._bucket

    async def check(self, authorization: str | None) -> Caller:
        """The caller behind ``authorization``, once its key is valid and its request bucket had a token."""
        if not self._auth.enabled:
            return Caller()
        key = bearer_key(authorization)
        if key is None:
            raise _unauthorized()
        key_digest = api_keys.digest(key)
        record = None if key_digest in self._static else await self._redis_record(key_digest)
        caller = Caller(key_digest, record)
        rate = (record and record.rate_per_s) or self._auth.rate_limit_per_s
        if rate is None:
            return caller
        burst = (record and record.burst) or self._auth.rate_limit_burst
        _, bucket = self._redis()
        try:
            wait_s = await self._guarded(lambda: bucket.take(self._keys.rate_bucket(key_digest), rate, burst))
        except _UNAVAILABLE as exc:
            self._redis_unavailable(exc, key_digest)
            return caller
        if wait_s is not None:
            raise ApiError(
                429,
                f"Rate limit of {rate:g} requests/s (burst {burst}) exceeded for this API key; retry in {wait_s} s.",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(wait_s)},
            )
        return caller

    def budget(self, caller: Caller) -> Budget | None:
        """The token budget that applies to ``caller``, if any (a key's own, else ``auth.token_budget_per_s``)."""
        record = caller.record
        rate = (record and record.tokens_per_s) or self._auth.token_budget_per_s
        if caller.key_digest is None or rate is None:
            return None
        burst = (record and record.token_burst) or self._auth.token_budget_burst
        return Budget(self._keys.token_bucket(caller.key_digest), rate, burst)

    async def reserve(self, caller: Caller, tokens: int) -> Reservation | None:
        """Take ``tokens`` (a validated request's bound) from the caller's budget; None: no budget applies, or
        Redis is unreachable under ``on_redis_error: open``.

        Raises :class:`ApiError` 429 (with ``Retry-After``) while the budget is short, 400 when the request
        asks for more than the budget can ever hold, 503 when Redis is unreachable under ``closed``.
        """
        budget = self.budget(caller)
        if budget is None:
            return None
        if tokens > budget.burst:
            raise ApiError(
                400,
                f"This request may use up to {tokens} tokens (prompt and output), more than this API key's token "
                f"budget holds ({budget.burst}); lower max_tokens, n or the prompt.",
                param="max_tokens",
                code="token_budget_exceeded",
            )
        _, bucket = self._redis()
        try:
            wait_s = await self._guarded(
                lambda: bucket.take(budget.bucket_key, budget.tokens_per_s, budget.burst, tokens)
            )
        except _UNAVAILABLE as exc:
            self._redis_unavailable(exc, caller.key_digest or "")
            return None
        if wait_s is not None:
            raise ApiError(
                429,
                f"Token budget of {budget.tokens_per_s:g} tokens/s (burst {budget.burst}) exceeded for this API key: "
                f"this request reserves {tokens}; retry in {wait_s} s.",
                code="token_budget_exceeded",
                headers={"Retry-After": str(wait_s)},
            )
        return Reservation(self, budget, tokens)

    async def give_back(self, budget: Budget, tokens: int) -> None:
        """Return unspent ``tokens`` to ``budget``; a refund Redis did not take is the key's loss, not an error."""
        _, bucket = self._redis()
        try:
            await self._guarded(lambda: bucket.give_back(budget.bucket_key, budget.tokens_per_s, budget.burst, tokens))
        except _UNAVAILABLE as exc:
            logger.info("token budget refund of %d not taken: %s", tokens, error_kind(exc))

    async def _redis_record(self, key_digest: str) -> api_keys.KeyRecord:
        if not self._auth.redis_keys:
            raise _unauthorized()
        cached = self._verified.get(key_digest)
        if cached is not None and time.monotonic() - cached[0] < self._auth.key_cache_s:
            return cached[1]
        client, _ = self._redis()
        try:
            fields = await self._guarded(lambda: client.hgetall(self._keys.api_key_prefix + key_digest))
        except _UNAVAILABLE as exc:
            self._redis_unavailable(exc, key_digest)
            # Fail-open still refuses a key it has never seen, or has not seen in Redis for too long.
            if cached is None or time.monotonic() - cached[0] > self._auth.fail_open_key_max_age_s:
                raise _unauthorized() from exc
            return cached[1]
        if not fields:
            self._verified.pop(key_digest, None)  # revoked
            raise _unauthorized()
        record = api_keys.KeyRecord.from_redis(fields)
        self._verified[key_digest] = (time.monotonic(), record)
        self._verified.move_to_end(key_digest)
        while len(self._verified) > _CACHE_ENTRIES:
            self._verified.popitem(last=False)
        return record

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` through the breaker: :class:`CircuitOpen` at once while it is open."""
        return await self.breaker.guard(call, (redis.RedisError,), self._log_opened)

    def _log_opened(self, exc: BaseException) -> None:
        logger.warning(
            "redis failing (%s): not tried for %.0f s (on_redis_error=%s)",
            error_kind(exc),
            self._auth.redis_breaker_open_s,
            self._auth.on_redis_error,
        )

    def _redis_unavailable(self, exc: Exception, key_digest: str) -> None:
        """Fail-closed raises 503; fail-open returns (the caller admits the request)."""
        if not isinstance(exc, CircuitOpen):  # an open breaker was logged when it opened
            logger.warning(
                "redis unreachable for key %s…: %s (on_redis_error=%s)",
                key_digest[:8],
                error_kind(exc),
                self._auth.on_redis_error,
            )
        if self._auth.on_redis_error == "closed":
            raise ApiError(
                503,
                "Access control is unavailable right now; retry.",
                code="auth_unavailable",
                headers={"Retry-After": "1"},
            ) from exc


def _unauthorized() -> ApiError:
    return ApiError(401, "Invalid or missing API key (send `Authorization: Bearer <key>`).", code="invalid_api_key")
