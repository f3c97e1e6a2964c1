"""API keys as stored in Redis: one hash per key, at ``RedisKeys.api_key_prefix`` + the key's SHA-256.

Only the key's SHA-256 digest is ever stored or logged; the key itself is shown once, when
``python -m tools.api_keys add`` creates it. Each record holds a name (to find it again), its creation
time and optionally its own rate limit, overriding ``auth.rate_limit_per_s`` / ``auth.rate_limit_burst``.
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
    name: str
    created: float
    rate_per_s: float | None = None
    burst: int | None = None

    def to_redis(self) -> dict[str, str]:
        return {
            "name": self.name,
            "created": repr(self.created),
            "rate_per_s": "" if self.rate_per_s is None else repr(self.rate_per_s),
            "burst": "" if self.burst is None else str(self.burst),
        }

    @classmethod
    def from_redis(cls, fields: dict[bytes, bytes]) -> KeyRecord:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(
            name=f.get("name", ""),
            created=float(f.get("created") or 0),
            rate_per_s=float(f["rate_per_s"]) if f.get("rate_per_s") else None,
            burst=int(f["burst"]) if f.get("burst") else None,
        )

    @classmethod
    def new(cls, name: str, rate_per_s: float | None = None, burst: int | None = None) -> KeyRecord:
        return cls(name=name, created=time.time(), rate_per_s=rate_per_s, burst=burst)
