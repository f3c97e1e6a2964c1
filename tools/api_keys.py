"""Add, revoke and list the API keys an app accepts from Redis (``auth.redis_keys: true``).

    python -m tools.api_keys --redis redis://host:6379/0 --app dflash add alice [--rate 5 --burst 10]
        [--tokens 2000 --token-burst 65536]
    python -m tools.api_keys --redis redis://host:6379/0 --app dflash list
    python -m tools.api_keys --redis redis://host:6379/0 --app dflash revoke alice

``add`` prints the new key once; only its SHA-256 digest is stored. ``revoke`` takes a name or a
digest; ingress replicas stop accepting the key within ``auth.key_cache_s``.
"""

from __future__ import annotations

import argparse
import sys
import time

import redis

from contracts.redis_keys import RedisKeys
from deployments.ingress import api_keys
from deployments.redis_auth import redis_password


def add(client: redis.Redis, app: str, name: str, **limits: float | int | None) -> str:
    """A new key named ``name``, with ``limits`` (:class:`~deployments.ingress.api_keys.KeyRecord`'s)."""
    key = api_keys.generate()
    record = api_keys.KeyRecord.new(name, **limits)
    client.hset(RedisKeys(app).api_key_prefix + api_keys.digest(key), mapping=record.to_redis())
    return key


def records(client: redis.Redis, app: str) -> dict[str, api_keys.KeyRecord]:
    """Stored keys by digest."""
    prefix = RedisKeys(app).api_key_prefix
    out = {}
    for raw in client.scan_iter(match=prefix + "*"):
        name = raw.decode()
        out[name[len(prefix) :]] = api_keys.KeyRecord.from_redis(client.hgetall(name))
    return out


def revoke(client: redis.Redis, app: str, name_or_digest: str) -> list[str]:
    """Digests removed: every key with that name, or the key with that digest."""
    gone = [d for d, r in records(client, app).items() if name_or_digest in (d, r.name)]
    for d in gone:
        keys = RedisKeys(app)
        client.delete(keys.api_key_prefix + d, keys.rate_bucket(d), keys.token_bucket(d))
    return gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", required=True, help="the app's redis_url")
    parser.add_argument("--app", default="dflash", help="the app's name (AppConfig.name)")
    parser.add_argument("--redis-password-file", default=None, help="the app's redis_password_file")
    sub = parser.add_subparsers(dest="command", required=True)
    p_add = sub.add_parser("add", help="create a key and print it (once)")
    p_add.add_argument("name")
    p_add.add_argument("--rate", type=float, default=None, help="requests/s for this key (default: the app's)")
    p_add.add_argument("--burst", type=int, default=None, help="bucket size for this key")
    p_add.add_argument("--tokens", type=float, default=None, help="tokens/s this key may spend (default: the app's)")
    p_add.add_argument("--token-burst", type=int, default=None, help="tokens this key may hold at once")
    p_rev = sub.add_parser("revoke", help="remove keys by name or digest")
    p_rev.add_argument("name_or_digest")
    sub.add_parser("list", help="names, digests and limits (never keys)")
    opts = parser.parse_args(argv)
    client = redis.Redis.from_url(opts.redis, password=redis_password(opts.redis_password_file))
    if opts.command == "add":
        limits = {"rate_per_s": opts.rate, "burst": opts.burst, "tokens_per_s": opts.tokens}
        print(add(client, opts.app, opts.name, **limits, token_burst=opts.token_burst))
    elif opts.command == "revoke":
        gone = revoke(client, opts.app, opts.name_or_digest)
        print(f"revoked {len(gone)} key(s)")
        if not gone:
            return 1
    else:
        for d, r in sorted(records(client, opts.app).items(), key=lambda kv: kv[1].created):
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created))
            limits = "\t".join(f"{k}={v if v is not None else '-'}" for k, v in r.limits().items())
            print(f"{r.name}\t{d}\t{created}Z\t{limits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
