"""Every Redis key dflash-serve writes, spelled once: one namespace per app, ``dflash:<app>:``.

* ``dflash:<app>:<model id>:events`` and ``...:snap:<replica>`` — the model's routing stream
  (``deployments/kv_stream.py`` appends the two suffixes to :meth:`RedisKeys.model_stream`);
* ``dflash:<app>:apikey:<sha256 of the key>`` — an API key's record (``deployments/ingress/api_keys.py``);
* ``dflash:<app>:ratelimit:<sha256 of the key>`` — its request bucket, and ``...:tokenbudget:<sha256>`` its
  token budget (both ``deployments/ingress/rate_limit.py`` buckets).

Apps sharing one Redis never see each other's keys, and ``tools.api_keys`` and the tests find them here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RedisKeys:
    app: str  # the Serve application's name (AppConfig.name)

    @property
    def namespace(self) -> str:
        return f"dflash:{self.app}"

    def model_stream(self, model_id: str) -> str:
        """Key prefix of a model's routing stream and snapshots."""
        return f"{self.namespace}:{model_id}"

    @property
    def api_key_prefix(self) -> str:
        return f"{self.namespace}:apikey:"

    def rate_bucket(self, key_digest: str) -> str:
        """Where a key's token bucket lives (named by digest: the key never reaches Redis)."""
        return f"{self.namespace}:ratelimit:{key_digest}"

    def token_bucket(self, key_digest: str) -> str:
        """Where a key's token budget lives (prompt and output tokens, not requests)."""
        return f"{self.namespace}:tokenbudget:{key_digest}"
