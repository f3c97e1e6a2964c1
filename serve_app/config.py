"""The one configuration model of dflash-serve.

Every YAML file under ``serve_app/configs/`` is an instance of :class:`AppConfig`; the builder,
the deployments and the tools read their settings from it and from nowhere else. Models are strict
(``extra="forbid"``, frozen) so a typo in a YAML file fails at load time with the field's name
instead of being ignored on a GPU node an hour later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vllm_plugins.draft_semantics import DraftSemanticsMode


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _on_off(value: Any) -> Any:
    """Accept the spellings people type in YAML and on the command line for a switch.

    YAML 1.1 already reads ``off``/``on`` as booleans; ``serve run ... speculative=off`` passes the
    string, so both reach here and mean the same thing.
    """
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("on", "true", "1", "yes"):
            return True
        if lowered in ("off", "false", "0", "no"):
            return False
    return value


class SpeculativeConfig(_Strict):
    """The DFlash drafter that runs beside the target on the same GPU."""

    method: Literal["dflash"] = Field("dflash", description="Speculative method passed to vLLM.")
    draft_model: str = Field(description="Drafter source: Hugging Face id or local directory.")
    num_speculative_tokens: int = Field(
        15, ge=1, le=63, description="Tokens drafted per step; at most the drafter's block size - 1."
    )
    attention_backend: str | None = Field(
        None,
        description="The drafter's own attention backend (must support non-causal attention; "
        "flash_attn on Hopper/Blackwell). None lets vLLM choose.",
    )
    draft_semantics: DraftSemanticsMode = Field(
        "auto",
        description="The drafter's forward: auto and zlab run z-lab's reference semantics (the target's scaled "
        "embeddings, soft-capped logits; vllm_plugins/, vLLM PR #41703's first item), stepping aside where vLLM "
        "already applies them; zlab also refuses to start an engine where the plugin is not installed; vllm runs "
        "stock vLLM's draft forward (for A/B measurements).",
    )


class EngineConfig(_Strict):
    """vLLM engine settings for one replica (target + drafter on one GPU)."""

    max_model_len: int = Field(4096, ge=16, description="Context length (prompt + output) in tokens.")
    max_num_seqs: int = Field(64, ge=1, description="Sequences the engine batches at once.")
    max_num_batched_tokens: int = Field(
        8192, ge=16, description="Token budget of one scheduler step; keep >= max_num_seqs x (K+1)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs (always on for CPU).")
    enable_prefix_caching: bool = Field(True, description="Automatic prefix caching (the router relies on it).")
    prefix_cache_retention: Literal["dense", "checkpoints"] = Field(
        "dense",
        description="Which sliding-window KV blocks stay reusable once they leave the window (vLLM's "
        "prefix_cache_retention_interval). checkpoints (vLLM's default, 0): only at a prompt's end and shared-"
        "prefix junctions, so a chat's next turn reuses the previous prompt but not the answer; dense (None): every "
        "unit, so it reuses prompt and answer (docs/known-issues.md). Retained blocks stay evictable.",
    )
    block_size: int | None = Field(None, ge=1, description="KV block size; None lets vLLM pick per model.")
    dtype: str = Field("auto", description="Weights/activations dtype (auto, bfloat16, float32, ...).")
    attention_backend: str | None = Field(
        None, description="The target's attention backend (e.g. triton_attn for Gemma-4 on Blackwell)."
    )
    seed: int = Field(0, description="Engine seed, so sampled outputs with a request seed are reproducible.")
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        description="GPUs one engine shards the target over (the drafter runs on the same ranks, as vLLM does "
        "for DFlash). Above 1 the replica's placement group holds one bundle per GPU on one node.",
    )
    kv_cache_memory_gib: float | None = Field(
        None,
        gt=0,
        description="Fixed KV cache size per replica; overrides gpu_memory_utilization (which on CPU "
        "engines is a share of host RAM that must be free at start). Set it on CPU.",
    )
    chat_template_content_format: Literal["auto", "string", "openai"] = Field(
        "string",
        description="How vLLM hands message content to the chat template. Gemma-4's template prints a system "
        "message's content as is, so vLLM's auto-detected 'openai' (a list of parts, strings wrapped too) would put "
        "the list's repr in the prompt; 'string' joins text parts with newlines, as the ingress does when it "
        "renders, and puts an image's placeholder token in its place (vllm_plugins/gemma4_placeholders.py).",
    )
    reasoning_parser: str | None = Field("gemma4", description="vLLM reasoning parser splitting out thinking.")
    tool_call_parser: str | None = Field("gemma4", description="vLLM tool-call parser; None disables tools.")
    extra_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other vLLM AsyncEngineArgs field, checked against vLLM's own fields at startup.",
    )


class LatencySlo(_Strict):
    """The latency objective the autoscaler holds (per request, at the 90th percentile)."""

    ttft_p90_s: float = Field(2.0, gt=0, description="Time to first token, 90th percentile, in seconds.")
    tpot_p90_s: float = Field(
        0.05, gt=0, description="Time per output token after the first (decode latency), 90th percentile, seconds."
    )


class AutoscalingConfig(_Strict):
    """How the engine deployment scales between ``min_replicas`` and ``max_replicas`` (docs/autoscaling.md)."""

    policy: Literal["slo", "ongoing_requests"] = Field(
        "slo",
        description="slo: autoscaling/policy.py, fed by the engines' queue, KV and latency reports; "
        "ongoing_requests: Serve's default (target_fill x max_num_seqs ongoing requests per replica).",
    )
    slo: LatencySlo = Field(default_factory=LatencySlo)
    kv_cache_target: float = Field(
        0.85, gt=0, le=1, description="KV cache usage counted as a full replica (above it vLLM preempts)."
    )
    replica_start_s: float = Field(
        240,
        ge=0,
        description="Expected time from asking for a replica to its serving (node, weights, CUDA graphs): the "
        "policy provisions for the load it projects this far ahead.",
    )
    max_lookahead_factor: float = Field(
        2.0, ge=1, description="Cap on the projected load as a multiple of the current one (a spike is not a trend)."
    )
    trend_half_life_s: float = Field(
        30, gt=0, description="Half-life of the smoothing of the load's growth rate (noise vs reaction time)."
    )
    queue_drain_s: float = Field(
        120,
        gt=0,
        description="Requests queued at the handles are provisioned for as if they must drain within this long "
        "(shorter: more replicas after a burst, better latency, more GPU time).",
    )
    downscale_headroom: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Hysteresis: replicas are removed only while the rest would run at most this share of their "
        "target fill, for the whole of downscale_delay_s.",
    )
    scale_to_zero_idle_s: float = Field(
        600, ge=0, description="With min_replicas 0: how long a deployment must be idle before its last replica goes."
    )
    stats_window_s: float = Field(
        30, gt=0, description="Window of the recent TTFT / time-per-token samples each engine reports."
    )
    min_decode_tokens_per_s: float = Field(
        10,
        gt=0,
        description="Slowest decode rate a stream is allowed; a leaving replica gets max_model_len tokens at this "
        "rate (capped by the ingress request timeout) to finish its in-flight requests.",
    )


class ReplicaConfig(_Strict):
    """Resources and scaling of the engine deployment of one model."""

    num_cpus: float = Field(1, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(
        0, ge=0, description="GPUs per engine rank: 1 on GPU clusters, 0 on CPU (x tensor_parallel_size per replica)."
    )
    accelerator_type: str | None = Field(None, description="Ray accelerator type label, e.g. B300.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources a replica reserves besides CPU/GPU, e.g. a slot resource that only "
        "some nodes offer.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "STRICT_PACK",
        description="Strategy of the replica's placement group (its bundles: one per GPU of the engine). "
        "STRICT_PACK keeps a tensor-parallel engine on one node's NVLink.",
    )
    max_replicas_per_node: int | None = Field(
        None,
        ge=1,
        description="Most replicas of this model on one node; None: as many as the node's resources allow "
        "(8 per p6-b300 with one GPU each). Serve forbids it beside a placement group, so a capped replica is "
        "placed as a plain actor with its one bundle's resources; not with tensor_parallel_size > 1.",
    )
    min_replicas: int = Field(1, ge=0, description="Autoscaling floor.")
    max_replicas: int = Field(1, ge=1, description="Autoscaling ceiling.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at deploy time (default: min).")
    target_fill: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Target share of max_num_seqs busy per replica; above it Serve adds replicas.",
    )
    queue_headroom: float = Field(
        1.5,
        ge=1,
        description="max_ongoing_requests = max_num_seqs x this: requests a replica accepts (the rest queue in "
        "the engine) before the router must look elsewhere. Past saturation, 1.0 sends waiting requests to "
        "whichever slot frees first and prefix affinity collapses (docs/benchmarks.md, scaling).",
    )
    upscale_delay_s: float = Field(
        10, ge=0, description="ongoing_requests policy: how long load must stay high before adding (slo adds at once)."
    )
    downscale_delay_s: float = Field(300, ge=0, description="How long load must stay low before removing.")
    health_check_period_s: float = Field(10, gt=0, description="How often Serve checks the engine.")
    graceful_shutdown_timeout_s: float | None = Field(
        None,
        ge=0,
        description="Time a leaving replica gets to finish its in-flight requests; None derives it from the "
        "longest allowed generation (autoscaling.min_decode_tokens_per_s).",
    )
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)

    @model_validator(mode="after")
    def _bounds(self) -> ReplicaConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class RoutingConfig(_Strict):
    """How the ingress picks an engine replica for each request (see routing/policies/)."""

    policy: Literal["prefix", "pow2", "round_robin"] = Field(
        "prefix",
        description="prefix: where the prompt's KV blocks are, balanced against load; pow2: power of two "
        "choices (Ray Serve's default); round_robin: in turn.",
    )
    mode: Literal["approximate", "precise"] = Field(
        "approximate",
        description="prefix: approximate = the index holds what routers sent where; precise = also what the "
        "engines' KV cache events say they hold and evicted (needs redis_url).",
    )
    session_affinity: bool = Field(
        False, description="Keep a session (x-session-id header or the OpenAI `user` field) on one replica."
    )
    weight_prefix: float = Field(1.0, ge=0, description="prefix: weight of the cached share of the prompt.")
    weight_load: float = Field(0.5, ge=0, description="prefix: weight of the replica's fill (in flight/capacity).")
    weight_kv: float = Field(0.1, ge=0, description="prefix: weight of the replica's KV cache usage.")
    weight_session: float = Field(1.0, ge=0, description="prefix: bonus of the session's own replica.")
    imbalance_abs: int = Field(
        32, ge=0, description="prefix: in-flight spread above which load wins outright (see routing-simulator.md)."
    )
    imbalance_rel: float = Field(1.5, ge=1, description="prefix: ... and max > this x min.")
    min_match_fraction: float = Field(
        0.1, ge=0, le=1, description="prefix: share of the prompt a replica must hold to count as a match."
    )
    max_prefix_blocks: int = Field(
        256,
        ge=1,
        description="prefix: leading KV blocks of a prompt the router hashes and matches (llm-d's default); "
        "bounds routing cost for long prompts.",
    )
    index_capacity_blocks: int = Field(
        65536, ge=1, description="prefix: index entries kept per replica (bounds router memory)."
    )
    stats_period_s: float = Field(
        1.0, gt=0, description="How often replicas report load and counters to routers and /metrics."
    )
    events_maxlen: int = Field(
        100_000, ge=100, description="Entries kept in the Redis stream of KV events and routing records."
    )
    snapshot_period_s: float = Field(
        10.0, gt=0, description="precise: how often each engine replica writes its held blocks for late routers."
    )

    def policy_options(self) -> dict[str, Any]:
        """Keyword arguments of the pure policy (JSON-serialisable: they travel in Serve's config)."""
        if self.policy != "prefix":
            return {}
        return {
            "weight_prefix": self.weight_prefix,
            "weight_load": self.weight_load,
            "weight_kv": self.weight_kv,
            "weight_session": self.weight_session,
            "imbalance_abs": self.imbalance_abs,
            "imbalance_rel": self.imbalance_rel,
            "min_match_fraction": self.min_match_fraction,
            "capacity_blocks": self.index_capacity_blocks,
        }

    @property
    def needs_tokens(self) -> bool:
        """Whether the ingress must tokenize prompts for this policy."""
        return self.policy == "prefix"


class ModelConfig(_Strict):
    """One served model: its own engine deployment, addressed by the request's ``model``."""

    id: str = Field(description="Served model id (the OpenAI `model` field).", min_length=1)
    target: str = Field(description="Target model source: Hugging Face id or local directory.")
    tokenizer: str | None = Field(None, description="Tokenizer source if not the target's.")
    speculative: SpeculativeConfig | None = Field(None, description="DFlash drafter; None serves plain AR.")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)

    @model_validator(mode="after")
    def _tensor_parallel_needs_gpus(self) -> ModelConfig:
        if self.engine.tensor_parallel_size > 1 and self.replicas.num_gpus != 1:
            raise ValueError(
                f"model {self.id!r}: tensor_parallel_size={self.engine.tensor_parallel_size} needs "
                "replicas.num_gpus=1 (one whole GPU per tensor-parallel rank)"
            )
        if self.engine.tensor_parallel_size > 1 and self.replicas.max_replicas_per_node is not None:
            raise ValueError(
                f"model {self.id!r}: max_replicas_per_node needs tensor_parallel_size=1 (Ray Serve does not "
                "cap replicas per node for placement-group replicas; the node's GPUs cap them)"
            )
        return self

    @model_validator(mode="after")
    def _budget(self) -> ModelConfig:
        if self.speculative is not None:
            need = self.engine.max_num_seqs * (self.speculative.num_speculative_tokens + 1)
            if self.engine.max_num_batched_tokens < need:
                raise ValueError(
                    f"model {self.id!r}: max_num_batched_tokens={self.engine.max_num_batched_tokens} "
                    f"< max_num_seqs x (num_speculative_tokens + 1) = {need}; vLLM's drafter buffers "
                    "overflow (vllm#53970). Raise max_num_batched_tokens or lower max_num_seqs."
                )
        return self

    def deployment_name(self) -> str:
        """Serve deployment name: stable, readable, and unique per model id."""
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in self.id)
        return f"Engine-{safe}"


class AuthConfig(_Strict):
    """API keys and per-key rate limits (docs/reliability.md).

    Keys are stored as SHA-256 digests only: in this list, and (``redis_keys``) in the app's Redis, where
    ``python -m tools.api_keys`` adds and revokes them. With no key source configured the endpoint is open.
    """

    api_key_sha256: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=list, description="Hex SHA-256 digests of the accepted API keys."
    )
    redis_keys: bool = Field(
        False, description="Also accept the keys stored in the app's Redis (needs redis_url; tools.api_keys)."
    )
    key_cache_s: float = Field(
        30,
        ge=0,
        description="How long an ingress replica trusts a Redis key it verified; a revoked key stops working "
        "within this time.",
    )
    rate_limit_per_s: float | None = Field(
        None,
        gt=0,
        description="Requests per second each key may send (a token bucket in Redis shared by every ingress "
        "replica; needs redis_url). A key's own limit, set with tools.api_keys, overrides it. None: unlimited.",
    )
    rate_limit_burst: int = Field(20, ge=1, description="Requests a key may send at once (the bucket's size).")
    on_redis_error: Literal["open", "closed"] = Field(
        "closed",
        description="When Redis cannot be reached: closed answers 503 for requests that need it (a Redis key, a "
        "rate limit); open admits them without their rate limit, accepting Redis keys this replica has already "
        "verified (never an unknown key). Static keys work either way.",
    )
    protect_metrics: bool = Field(False, description="Require a key for /metrics too.")

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self.api_key_sha256) or self.redis_keys


class AdmissionConfig(_Strict):
    """Per-model admission at each ingress replica: a bounded number in flight, a bounded queue behind them."""

    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Requests of one model an ingress replica sends to its engines at once; None: what the "
        "model's largest deployment takes (max_replicas x max_ongoing_requests).",
    )
    max_queued: int = Field(
        256, ge=0, description="Requests of one model waiting for a slot; one more is answered 429 at once."
    )
    queue_timeout_s: float = Field(
        30,
        gt=0,
        description="Longest a request waits for a slot before a 503 with Retry-After (also the wait for a "
        "first replica of a model scaled to zero).",
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After (seconds) sent with 429 and 503 answers.")


class IngressConfig(_Strict):
    """The OpenAI-compatible HTTP front."""

    num_replicas: int = Field(1, ge=1, description="Ingress replicas (each routes on its own).")
    num_cpus: float = Field(0.5, ge=0, description="CPUs reserved per ingress replica.")
    max_ongoing_requests: int = Field(1024, ge=1, description="Requests one ingress replica holds at once.")
    request_timeout_s: float = Field(600, gt=0, description="Longest a request may take end to end.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body accepted.")
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)
    dispatch_retries: int = Field(
        2,
        ge=0,
        description="Times a request is sent again, to another replica, when its replica died before the "
        "first response byte (never for the client's own errors).",
    )


class KvStreamSettings(_Strict):
    """Where one model's KV events and routing records are shared (derived from AppConfig, not written)."""

    redis_url: str
    key_prefix: str  # dflash:<app>:<model id>
    maxlen: int
    snapshot_period_s: float


class AppConfig(_Strict):
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
    speculative: bool = Field(
        True, description="Global switch: off serves every model without its drafter (the AR baseline)."
    )

    _normalise_switch = field_validator("speculative", mode="before")(_on_off)

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate model ids: {dupes}")
        return self

    @model_validator(mode="after")
    def _auth_needs_redis(self) -> AppConfig:
        if self.redis_url is None and (self.auth.redis_keys or self.auth.rate_limit_per_s is not None):
            raise ValueError(
                "auth.redis_keys and auth.rate_limit_per_s need redis_url (shared by all ingress replicas)"
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
            key_prefix=f"dflash:{self.name}:{model.id}",
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


class BuildArgs(_Strict):
    """Arguments of ``serve run serve_app:build_app`` (``key=value``) or a serve config's ``args``.

    Either ``config`` (a YAML path) or ``app`` (the AppConfig inline) must be given; the other
    fields override the file so that one YAML serves both the DFlash and the AR runs.
    """

    config: str | None = Field(None, description="Path to an AppConfig YAML file.")
    app: AppConfig | None = Field(None, description="The AppConfig inline (serve deploy configs).")
    speculative: bool | None = Field(None, description="Override the global speculative switch.")

    _normalise_switch = field_validator("speculative", mode="before")(_on_off)

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
