"""API keys and per-key rate limits (deployments/ingress/access.py) against a real redis-server, outages included.

The CLI (tools.api_keys) writes the keys; the ingress's Access reads them. Two Access objects on one
Redis stand for two ingress replicas sharing each key's token bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator

import pytest
import redis

from config import AuthConfig
from deployments.ingress.access import Access, Caller
from deployments.ingress.errors import ApiError
from tools import api_keys as cli
from tools.redis_server import RedisServer

APP = "test-app"


@pytest.fixture()
def server() -> Iterator[RedisServer]:
    s = RedisServer()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(autouse=True)
def _one_loop() -> Iterator[None]:
    """Each Access keeps its Redis connections on the event loop that made them, as in a replica."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        loop.close()
        asyncio.set_event_loop(None)


def _run(coro):
    return asyncio.get_event_loop().run_until_complete(coro)


def _status(access: Access, key: str | None) -> int:
    try:
        _run(access.check(None if key is None else f"Bearer {key}"))
    except ApiError as err:
        return err.status
    return 200


def _fresh(auth: AuthConfig, url: str | None) -> Access:
    return Access(auth, url, APP)


def test_static_keys_without_redis():
    auth = AuthConfig(api_key_sha256=[hashlib.sha256(b"sk-good").hexdigest()])
    access = _fresh(auth, None)
    assert _status(access, "sk-good") == 200
    assert _status(access, "sk-bad") == 401
    assert _status(access, None) == 401
    assert _status(_fresh(AuthConfig(), None), None) == 200  # no key source: open


def test_cli_adds_lists_and_revokes_keys_stored_hashed(server: RedisServer, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["--redis", server.url, "--app", APP, "add", "alice", "--rate", "2", "--burst", "3"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("sk-dflash-")
    client = redis.Redis.from_url(server.url)
    dump = b"".join(k + b"".join(client.hgetall(k).values()) for k in client.scan_iter())
    assert key.encode() not in dump and hashlib.sha256(key.encode()).hexdigest().encode() in dump

    access = _fresh(AuthConfig(redis_keys=True, key_cache_s=0), server.url)
    assert _status(access, key) == 200
    assert _status(access, "sk-dflash-guess") == 401
    cli.main(["--redis", server.url, "--app", APP, "list"])
    listing = capsys.readouterr().out
    assert "alice" in listing and key not in listing and "rate_per_s=2.0" in listing
    assert cli.main(["--redis", server.url, "--app", APP, "revoke", "alice"]) == 0
    assert _status(access, key) == 401  # key_cache_s=0: revocation is immediate
    assert cli.main(["--redis", server.url, "--app", APP, "revoke", "alice"]) == 1


def test_token_bucket_is_shared_between_replicas_and_says_when_to_retry(server: RedisServer):
    key = cli.add(redis.Redis.from_url(server.url), APP, "bob", rate_per_s=0.5, burst=3)
    auth = AuthConfig(redis_keys=True)
    one, two = _fresh(auth, server.url), _fresh(auth, server.url)

    async def burst() -> list[int | str]:
        out: list[int | str] = []
        for access in (one, two, one, two):
            try:
                await access.check(f"Bearer {key}")
                out.append(200)
            except ApiError as err:
                out.append(err.status)
                out.append(err.headers["Retry-After"])
        return out

    # Three tokens in the bucket, whichever replica takes them; the fourth waits for the refill (0.5/s).
    assert _run(burst()) == [200, 200, 200, 429, "2"]


def _refusal(call) -> tuple[int, str | None, str | None]:
    with pytest.raises(ApiError) as err:
        _run(call)
    return err.value.status, err.value.code, err.value.headers.get("Retry-After")


def test_token_budget_reserves_a_bound_gives_back_the_unspent_and_is_shared(server: RedisServer):
    """A key's own budget of 100 tokens (refilled at 0.001/s: not within the test), two ingress replicas."""
    key = cli.add(redis.Redis.from_url(server.url), APP, "erin", tokens_per_s=0.001, token_burst=100)
    auth = AuthConfig(redis_keys=True, token_budget_per_s=1000)  # the key's own budget overrides the app's
    one, two = _fresh(auth, server.url), _fresh(auth, server.url)
    caller = _run(one.check(f"Bearer {key}"))
    assert one.budget(caller) is not None and one.budget(caller).burst == 100
    first = _run(one.reserve(caller, 60))
    status, code, retry = _refusal(two.reserve(caller, 50))  # 40 left, whichever replica asks
    assert (status, code) == (429, "token_budget_exceeded") and int(retry) >= 1
    _run(first.settle(20))  # spent 20 of 60: 40 come back, 80 left
    _run(first.settle(0))  # settled once: nothing more comes back
    assert _run(two.reserve(caller, 80)) is not None
    assert _refusal(two.reserve(caller, 1))[:2] == (429, "token_budget_exceeded")
    assert _refusal(one.reserve(caller, 101))[:2] == (400, "token_budget_exceeded")  # never fits the bucket
    static = AuthConfig(api_key_sha256=[hashlib.sha256(b"sk-static").hexdigest()])
    plain = _fresh(static, server.url)
    assert _run(plain.reserve(_run(plain.check("Bearer sk-static")), 10**9)) is None  # no budget configured


def test_default_rate_limit_applies_to_static_keys(server: RedisServer):
    auth = AuthConfig(api_key_sha256=[hashlib.sha256(b"sk-static").hexdigest()], rate_limit_per_s=1, rate_limit_burst=1)
    access = _fresh(auth, server.url)
    assert [_status(access, "sk-static") for _ in range(2)] == [200, 429]


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_redis_outage_follows_the_configured_fail_mode(server: RedisServer, mode: str):
    key = cli.add(redis.Redis.from_url(server.url), APP, "carol")
    static = "sk-static"
    auth = AuthConfig(
        api_key_sha256=[hashlib.sha256(static.encode()).hexdigest()],
        redis_keys=True,
        key_cache_s=0,
        rate_limit_per_s=100,
        token_budget_per_s=100,
        on_redis_error=mode,
        redis_breaker_open_s=0.05,
    )
    access = _fresh(auth, server.url)
    assert _status(access, key) == 200  # verified once while Redis is up
    other = cli.add(redis.Redis.from_url(server.url), APP, "dave")  # never seen by this replica
    server.stop()
    try:
        if mode == "closed":
            assert [_status(access, k) for k in (key, other, static)] == [503, 503, 503]
        else:  # known keys in without their limits; an unknown key is never let in
            assert [_status(access, k) for k in (key, other, static)] == [200, 401, 200]
            assert _run(access.reserve(Caller(hashlib.sha256(key.encode()).hexdigest()), 10)) is None
        assert _status(access, "sk-wrong") == (503 if mode == "closed" else 401)
    finally:
        server.start()
    time.sleep(0.1)  # past the breaker's open time: the next request is its trial
    # Back to normal once Redis answers. This one restarted empty (no persistence): its keys are gone.
    assert [_status(access, k) for k in (static, key)] == [200, 401]


def test_fail_open_accepts_a_known_key_only_for_a_bounded_time(server: RedisServer):
    """A key revoked while Redis is down cannot be seen as revoked: it works for fail_open_key_max_age_s at most."""
    key = cli.add(redis.Redis.from_url(server.url), APP, "frank")
    auth = AuthConfig(redis_keys=True, key_cache_s=0, on_redis_error="open", fail_open_key_max_age_s=0.5)
    access = _fresh(auth, server.url)
    assert _status(access, key) == 200  # checked in Redis now
    server.stop()
    try:
        assert _status(access, key) == 200  # fail-open: known, checked 0.5 s ago at most
        time.sleep(0.6)
        assert _status(access, key) == 401  # not checked in Redis for longer than the bound
    finally:
        server.start()


@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_blackholed_redis_opens_the_breaker_and_requests_stop_waiting_on_it(server: RedisServer, mode: str):
    """SIGSTOP: Redis accepts connections and never answers; each try costs a client timeout until the breaker
    opens, after which requests get the configured answer without trying Redis."""
    static = "sk-static"
    auth = AuthConfig(
        api_key_sha256=[hashlib.sha256(static.encode()).hexdigest()],
        rate_limit_per_s=100,
        on_redis_error=mode,
        redis_timeout_s=0.25,
        redis_breaker_failures=2,
        redis_breaker_open_s=600,
    )
    access = _fresh(auth, server.url)
    assert _status(access, static) == 200
    server.pause()
    try:
        answers = [_status(access, static) for _ in range(5)]
    finally:
        server.resume()
    assert answers == [503] * 5 if mode == "closed" else [200] * 5
    assert access.breaker.state == "open"
    assert access.breaker.rejected == 3  # two timed out and opened it; three never waited on Redis
    client, _ = access._redis()
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.25  # each try waits this long at most


def test_a_redis_with_a_password_is_reached_through_the_password_file(tmp_path, capsys: pytest.CaptureFixture[str]):
    """Production's Redis requires a password, which the app reads from a mounted secret file only."""
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret-pw\n")
    server = RedisServer(password="s3cret-pw")
    server.start()
    try:
        assert cli.main(["--redis", server.url, "--redis-password-file", str(secret), "--app", APP, "add", "a"]) == 0
        key = capsys.readouterr().out.strip()
        auth = AuthConfig(redis_keys=True, key_cache_s=0)
        assert _status(Access(auth, server.url, APP, str(secret)), key) == 200
        assert _status(Access(auth, server.url, APP), key) == 503  # no password: Redis refuses, fail closed
    finally:
        server.stop()


def test_a_blackholed_redis_under_concurrent_load_answers_every_request_and_then_stops_trying():
    """SIGSTOP with 32 checks in flight at once: each gets its answer (fail-closed 503) after at most one
    client timeout, none hangs, and the 32 that come next never touch Redis (the breaker opened)."""
    server = RedisServer()
    server.start()
    static = "sk-static"
    auth = AuthConfig(
        api_key_sha256=[hashlib.sha256(static.encode()).hexdigest()],
        rate_limit_per_s=1000,
        rate_limit_burst=1000,
        redis_timeout_s=0.25,
        redis_breaker_failures=3,
        redis_breaker_open_s=600,
    )
    access = _fresh(auth, server.url)

    async def burst() -> list[int]:
        async def one() -> int:
            try:
                await asyncio.wait_for(access.check(f"Bearer {static}"), timeout=30)  # a hang fails the test
            except ApiError as err:
                return err.status
            return 200

        return list(await asyncio.gather(*(one() for _ in range(32))))

    try:
        assert _run(burst()) == [200] * 32  # Redis answering: every rate-limit check passes
        server.pause()
        try:
            assert _run(burst()) == [503] * 32  # each waited one timeout at most, fail closed
            assert access.breaker.state == "open"
            rejected = access.breaker.rejected
            assert _run(burst()) == [503] * 32
            assert access.breaker.rejected == rejected + 32  # none of these tried Redis
        finally:
            server.resume()
    finally:
        server.stop()
