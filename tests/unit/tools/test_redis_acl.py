"""The head's Redis ACL file: no secret in it, default user off, and (against a real redis-server when one is
installed) the app user can do what the app does under ``dflash:`` and nothing else."""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deployments.ingress.rate_limit import TOKEN_BUCKET_LUA
from tools.ports import free_port
from tools.redis_acl import APP_USER, GCS_USER, acl_text, main

GCS_PW = "gcs-" + "g" * 40
APP_PW = "app-" + "a" * 40


def _write_passwords(tmp_path: Path) -> tuple[Path, Path]:
    gcs, app = tmp_path / "redis-gcs-password", tmp_path / "redis-app-password"
    gcs.write_text(GCS_PW + "\n")  # as `aws ssm get-parameter --output text` writes it
    app.write_text(APP_PW + "\n")
    return gcs, app


def test_acl_file_holds_hashes_only_and_turns_the_default_user_off(tmp_path: Path):
    gcs, app = _write_passwords(tmp_path)
    out = tmp_path / "users.acl"
    assert main(["--gcs-password-file", str(gcs), "--app-password-file", str(app), "--out", str(out)]) == 0
    text = out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600
    assert GCS_PW not in text and APP_PW not in text
    lines = {line.split()[1]: line.split() for line in text.splitlines()}
    assert set(lines) == {"default", GCS_USER, APP_USER}
    assert lines["default"][2] == "off" and not any(w.startswith(("#", ">")) for w in lines["default"])
    assert f"#{hashlib.sha256(GCS_PW.encode()).hexdigest()}" in lines[GCS_USER]
    assert f"#{hashlib.sha256(APP_PW.encode()).hexdigest()}" in lines[APP_USER]
    assert {"~*", "+@all"} <= set(lines[GCS_USER])
    assert {"~dflash:*", "-@dangerous"} <= set(lines[APP_USER]) and "~*" not in lines[APP_USER]


def test_acl_refuses_empty_or_shared_passwords(tmp_path: Path):
    with pytest.raises(ValueError):
        acl_text("", APP_PW)
    with pytest.raises(ValueError):
        acl_text(APP_PW, APP_PW)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["--gcs-password-file", str(empty), "--app-password-file", str(empty)]) == 1


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    gcs, app = _write_passwords(tmp_path)
    acl = tmp_path / "users.acl"
    assert main(["--gcs-password-file", str(gcs), "--app-password-file", str(app), "--out", str(acl)]) == 0
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes", "--aclfile", str(acl)]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait()


def test_app_user_can_do_what_the_app_does_under_dflash_and_nothing_else(acl_redis: int):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # As the app connects: the user in redis_url, the password from redis_password_file.
    app = redis.Redis.from_url(f"redis://{APP_USER}@127.0.0.1:{acl_redis}/1", password=APP_PW)
    assert app.acl_whoami() == APP_USER
    # Routing stream and snapshots (deployments/kv_stream.py), keys and buckets (ingress/access.py, rate_limit.py).
    stream = "dflash:dflash:m:events"
    first = app.xadd(stream, {"e": "1"}, maxlen=100, approximate=True)
    assert app.xread({stream: "0-0"}, count=10)[0][1][0][0] == first
    assert len(app.xrange(stream)) == 1 and app.xtrim(stream, maxlen=0) == 1
    pipe = app.pipeline(transaction=False)
    pipe.set("dflash:dflash:m:snap:r1", b"x", ex=60).hset("dflash:dflash:apikey:d", mapping={"name": "k"})
    pipe.execute()
    assert app.get("dflash:dflash:m:snap:r1") == b"x" and app.expire("dflash:dflash:m:snap:r1", 30)
    assert app.hgetall("dflash:dflash:apikey:d") == {b"name": b"k"}
    assert sorted(app.scan_iter(match="dflash:dflash:*")) == [
        b"dflash:dflash:apikey:d",
        b"dflash:dflash:m:events",
        b"dflash:dflash:m:snap:r1",
    ]
    bucket = app.register_script(TOKEN_BUCKET_LUA)  # EVALSHA, EVAL on a miss
    assert int(bucket(keys=["dflash:dflash:ratelimit:d"], args=[1.0, 5, 1])[0]) == 1  # a request
    assert int(bucket(keys=["dflash:dflash:tokenbudget:d"], args=[1.0, 5, 4])[0]) == 1  # a request's tokens
    assert app.delete("dflash:dflash:apikey:d", "dflash:dflash:m:snap:r1", stream) == 3
    # Nothing outside dflash:, no dangerous command, no script touching other keys.
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.set("other:x", "1")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.get("other:x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        bucket(keys=["other:bucket"], args=[1.0, 5, 1])
    for dangerous in (app.flushall, app.flushdb, lambda: app.keys("*"), lambda: app.config_get("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            dangerous()
    # Wrong password, and the default user (no credentials at all); no retries (they only back off).
    once = Retry(NoBackoff(), 0)
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis, username=APP_USER, password="wrong", retry=once).ping()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis, retry=once).ping()


def test_gcs_user_has_full_access(acl_redis: int):
    import redis

    gcs = redis.Redis(port=acl_redis, db=0, username=GCS_USER, password=GCS_PW)
    assert gcs.set("dflash-serve@anything", "1") and gcs.get("dflash-serve@anything") == b"1"
    assert gcs.keys("*") == [b"dflash-serve@anything"]
