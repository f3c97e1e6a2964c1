"""The head's Redis ACL file (``redis-server --aclfile``), written from two password files.

The head's Redis serves two clients, each with its own user, and nobody else (``default`` is off):

* ``ray-gcs``: Ray's GCS (``ray start --head --redis-username=ray-gcs``), full access to its state in database 0;
* ``app``: the app's routers, rate limiter and key store (``redis_url: redis://app@dflash-redis:6380/1``),
  only keys under ``dflash:`` (contracts/redis_keys.py), no channels, and no ``@dangerous`` command
  (FLUSHALL, FLUSHDB, KEYS, CONFIG, DEBUG, SHUTDOWN, ...).

Passwords reach the file only as their SHA-256 (``#<hex>``), so the file holds no secret; they are read
like the app reads its own (:func:`deployments.redis_auth.redis_password`: surrounding whitespace dropped)::

    python -m tools.redis_acl --gcs-password-file /run/dflash-secrets/redis-gcs-password \\
        --app-password-file /run/dflash-secrets/redis-app-password --out /home/ray/redis-users.acl
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from pathlib import Path

from deployments.redis_auth import redis_password

logger = logging.getLogger(__name__)

GCS_USER = "ray-gcs"
APP_USER = "app"
GCS_RULES = "~* &* +@all"
APP_RULES = "resetchannels ~dflash:* +@all -@dangerous"


def password_hash(password: str) -> str:
    """Redis's ACL form of ``password``: ``#`` and its SHA-256 in lowercase hex."""
    return "#" + hashlib.sha256(password.encode("utf-8")).hexdigest()


def acl_text(gcs_password: str, app_password: str) -> str:
    """The ACL file's content for these two passwords (raises ValueError on an empty or shared one)."""
    if not gcs_password or not app_password:
        raise ValueError("Redis passwords must not be empty")
    if gcs_password == app_password:
        raise ValueError("the ray-gcs and app users need different passwords")
    return (
        "user default off resetkeys resetchannels -@all\n"
        f"user {GCS_USER} on {password_hash(gcs_password)} {GCS_RULES}\n"
        f"user {APP_USER} on {password_hash(app_password)} {APP_RULES}\n"
    )


def _read_password(path: str) -> str:
    password = redis_password(path)
    if not password:
        raise ValueError(f"{path} is empty")
    return password


def write_acl(gcs_password_file: str, app_password_file: str, out: Path) -> None:
    """Write the ACL file to ``out`` (mode 600, replaced atomically, so a running Redis never reads half of it)."""
    text = acl_text(_read_password(gcs_password_file), _read_password(app_password_file))
    tmp = out.with_name(out.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    logger.info("wrote Redis ACL file %s (users %s, %s; default off)", out, GCS_USER, APP_USER)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gcs-password-file", required=True, help=f"password of the {GCS_USER} user (Ray's GCS)")
    parser.add_argument("--app-password-file", required=True, help=f"password of the {APP_USER} user (the app)")
    parser.add_argument("--out", default=None, help="ACL file to write (mode 600); without it, print the ACL")
    opts = parser.parse_args(argv)
    try:
        if opts.out is None:
            text = acl_text(_read_password(opts.gcs_password_file), _read_password(opts.app_password_file))
            sys.stdout.write(text)
        else:
            write_acl(opts.gcs_password_file, opts.app_password_file, Path(opts.out))
    except (OSError, ValueError) as exc:
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
