"""API keys as stored in Redis: one hash per key, at ``RedisKeys.api_key_prefix`` + the key's SHA-256.

Only the key's SHA-256 digest is ever stored or logged; the key itself is shown once, when
``python -m tools.api_keys add`` creates it. Each record holds a name (to find it again), its creation
time and optionally its own limits, overriding ``auth.rate_limit_per_s`` / ``auth.rate_limit_burst`` and
``auth.token_budget_per_s`` / ``auth.token_budget_burst``.
Shared by the ingress (which reads records) and the CLI (which writes them).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

KEY_BYTES = 32


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate() -> str:
    return "sk-dflash-" + secrets.token_urlsafe(KEY_BYTES)


@dataclass(frozen=True)
class KeyRecord:
    """A key's name, creation time and its own limits (None: the app's ``auth`` setting applies)."""

    name: str
    created: float
    rate_per_s: float | None = None
    burst: int | None = None
    tokens_per_s: float | None = None
    token_burst: int | None = None

    def to_redis(self) -> dict[str, str]:
        limits = {k: "" if v is None else repr(v) for k, v in self.limits().items()}
        return {"name": self.name, "created": repr(self.created), **limits}

    def limits(self) -> dict[str, float | int | None]:
        return {k: getattr(self, k) for k in _LIMIT_TYPES}

    @classmethod
    def from_redis(cls, fields: dict[bytes, bytes]) -> KeyRecord:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        limits = {k: kind(f[k]) if f.get(k) else None for k, kind in _LIMIT_TYPES.items()}
        return cls(name=f.get("name", ""), created=float(f.get("created") or 0), **limits)

    @classmethod
    def new(cls, name: str, **limits: float | int | None) -> KeyRecord:
        return cls(name=name, created=time.time(), **limits)  # type: ignore[arg-type]


# The record's optional limits and how each is read back from Redis.
_LIMIT_TYPES: dict[str, type] = {"rate_per_s": float, "burst": int, "tokens_per_s": float, "token_burst": int}
