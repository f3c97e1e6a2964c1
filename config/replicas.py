"""The engine deployment's resources and scaling: replica counts, placement, the SLO autoscaler."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from config.base import Strict


class LatencySlo(Strict):
    """The latency objective the autoscaler holds (per request, at the 90th percentile)."""

    ttft_p90_s: float = Field(2.0, gt=0, description="Time to first token, 90th percentile, in seconds.")
    tpot_p90_s: float = Field(
        0.05, gt=0, description="Time per output token after the first (decode latency), 90th percentile, seconds."
    )


class AutoscalingConfig(Strict):
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


class ReplicaConfig(Strict):
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
