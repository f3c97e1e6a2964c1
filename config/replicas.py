"""The engine deployment's resources and scaling: replica counts, placement, the SLO autoscaler."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from autoscaling.policy import SloParams
from config.base import Strict


class AutoscalingConfig(Strict):
    """How the engine deployment scales between ``min_replicas`` and ``max_replicas`` (docs/autoscaling.md)."""

    policy: Literal["slo", "ongoing_requests"] = Field(
        "slo",
        description="slo: autoscaling/policy.py, fed by the engines' queue, KV and latency reports; "
        "ongoing_requests: Serve's default (target_fill x max_num_seqs ongoing requests per replica).",
    )
    slo: SloParams = Field(
        default_factory=SloParams,
        description="slo: the latency objective and the policy's tunables (defined in autoscaling/policy.py).",
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
