"""The whole application (:class:`AppConfig`), the builder's arguments, and what derives from them."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, field_validator, model_validator

from config.base import Strict, on_off
from config.engine_validation import check_engine
from config.front import AuthConfig, IngressConfig
from config.model import ModelConfig
from contracts.redis_keys import RedisKeys


class KvStreamSettings(Strict):
    """Where one model's KV events and routing records are shared (derived from AppConfig, not written)."""

    redis_url: str
    redis_password_file: str | None = None
    key_prefix: str  # dflash:<app>:<model id>
    maxlen: int
    snapshot_period_s: float


class AppConfig(Strict):
    """The whole application: models, ingress, auth, shared state."""

    name: str = Field("dflash", description="Serve application name.")
    models: list[ModelConfig] = Field(min_length=1, description="Served models, one deployment each.")
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    redis_url: str | None = Field(
        None,
        description="Redis shared by all ingress replicas' routers (decisions, and KV events in precise mode); "
        "None: each router knows only what it routed.",
    )
    redis_password_file: str | None = Field(
        None,
        description="File holding Redis's password (a mounted secret, read when a client connects), so the "
        "password is never part of this config, the generated serve config or a log line.",
    )
    speculative: bool = Field(
        True, description="Global switch: off serves every model without its drafter (the AR baseline)."
    )

    _normalise_switch = field_validator("speculative", mode="before")(on_off)

    @model_validator(mode="after")
    def _engines_as_vllm_takes_them(self) -> AppConfig:
        """What vLLM would refuse, or a router would silently miss, found at load (config/engine_validation.py).

        Here, above the models, so the checks (which know the models) sit above what they check."""
        for m in self.models:
            check_engine(m)
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {dupes}")
        return self

    @model_validator(mode="after")
    def _auth_needs_redis(self) -> AppConfig:
        limits = (self.auth.rate_limit_per_s, self.auth.token_budget_per_s)
        if self.redis_url is None and (self.auth.redis_keys or any(x is not None for x in limits)):
            raise ValueError(
                "auth.redis_keys, auth.rate_limit_per_s and auth.token_budget_per_s need redis_url "
                "(shared by all ingress replicas)"
            )
        return self

    @model_validator(mode="after")
    def _precise_needs_redis(self) -> AppConfig:
        for m in self.models:
            if m.routing.mode == "precise" and (self.redis_url is None or m.routing.policy != "prefix"):
                raise ValueError(
                    f"model {m.id!r}: routing.mode=precise needs policy=prefix and redis_url "
                    "(the engines' KV events reach the routers through Redis)"
                )
        return self

    def kv_stream(self, model: ModelConfig) -> KvStreamSettings | None:
        """The model's shared routing stream, when its routers share state through Redis."""
        if self.redis_url is None or model.routing.policy != "prefix":
            return None
        return KvStreamSettings(
            redis_url=self.redis_url,
            redis_password_file=self.redis_password_file,
            key_prefix=RedisKeys(self.name).model_stream(model.id),
            maxlen=model.routing.events_maxlen,
            snapshot_period_s=model.routing.snapshot_period_s,
        )

    def effective_models(self) -> list[ModelConfig]:
        """The models as they will be served, with the global speculative switch applied."""
        if self.speculative:
            return list(self.models)
        return [m.model_copy(update={"speculative": None}) for m in self.models]

    @classmethod
    def from_yaml(cls, path: str | Path) -> AppConfig:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
        return cls.model_validate(data)


class BuildArgs(Strict):
    """Arguments of ``serve run serve_app:build_app`` (``key=value``) or a serve config's ``args``.

    Either ``config`` (a YAML path) or ``app`` (the AppConfig inline) must be given; the other
    fields override the file so that one YAML serves both the DFlash and the AR runs.
    """

    config: str | None = Field(None, description="Path to an AppConfig YAML file.")
    app: AppConfig | None = Field(None, description="The AppConfig inline (serve deploy configs).")
    speculative: bool | None = Field(None, description="Override the global speculative switch.")

    _normalise_switch = field_validator("speculative", mode="before")(on_off)

    @model_validator(mode="after")
    def _one_source(self) -> BuildArgs:
        if (self.config is None) == (self.app is None):
            raise ValueError("give exactly one of `config` (a YAML path) or `app` (inline AppConfig)")
        return self

    def resolve(self) -> AppConfig:
        cfg = self.app if self.app is not None else AppConfig.from_yaml(self.config)  # type: ignore[arg-type]
        if self.speculative is not None:
            cfg = cfg.model_copy(update={"speculative": self.speculative})
        return cfg
