"""The autoscaling set-ups compared: our SLO policy and Serve's default at several targets.

Each arm is a Serve ``AutoscalingConfig`` plus the policy callable, built from the production config
(``serve_app/configs/gemma4-dflash-b300.yaml``) exactly as ``serve_app/build.py`` builds them, so the
benchmark runs what would be deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig

from config import ModelConfig
from deployments.autoscaler import SloPolicy
from serve_app.serve_options import autoscaling_config
from sim.autoscaling.serve_loop import PolicyFn, ServeLoop
from sim.production import production_model

# (target_ongoing_requests, upscale_delay_s, downscale_delay_s): 0.375, 0.5 and 0.75 of max_num_seqs 64 with
# the production config's delays, and the most conservative target with Serve's own default delays.
DEFAULT_ARMS = ((24, None, None), (32, None, None), (48, None, None), (24, 30.0, 600.0))


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    policy: str  # "slo" or "default"
    serve_config: dict[str, Any]

    def loop(self) -> ServeLoop:
        cfg = AutoscalingConfig(**{k: v for k, v in self.serve_config.items() if k != "policy"})
        fn: PolicyFn = replica_queue_length_autoscaling_policy
        if self.policy == "slo":
            fn = SloPolicy(**self.serve_config["policy"]["policy_kwargs"])
        return ServeLoop(fn, cfg)


def benchmark_model(max_replicas: int = 16, min_replicas: int = 1) -> ModelConfig:
    """The production model's engine and policy settings, between the benchmark's bounds.

    The shipped floor (8: one node's GPUs, paid for by the cluster's minimum node anyway) would hide
    what the policies do at low load, so the benchmark scales from one replica.
    """
    model = production_model()
    bounds = {"max_replicas": max_replicas, "min_replicas": min_replicas}
    return model.model_copy(update={"replicas": model.replicas.model_copy(update=bounds)})


def arms(model: ModelConfig) -> list[Arm]:
    """Our policy, then Serve's default at each target with the config's upscale/downscale delays."""
    slo = model.replicas.autoscaling.model_copy(update={"policy": "slo"})
    ours = model.model_copy(update={"replicas": model.replicas.model_copy(update={"autoscaling": slo})})
    out = [Arm("slo", "SLO policy (autoscaling/policy.py)", "slo", autoscaling_config(ours))]
    for target, up_s, down_s in DEFAULT_ARMS:
        auto = model.replicas.autoscaling.model_copy(update={"policy": "ongoing_requests"})
        update: dict[str, Any] = {"autoscaling": auto, "target_fill": target / model.engine.max_num_seqs}
        if up_s is not None:
            update.update(upscale_delay_s=up_s, downscale_delay_s=down_s)
        replicas = model.replicas.model_copy(update=update)
        cfg = autoscaling_config(model.model_copy(update={"replicas": replicas}))
        name = f"default-{target}" + ("-serve-delays" if up_s is not None else "")
        description = (
            f"Serve default, target_ongoing_requests={target}, upscale/downscale delay "
            f"{replicas.upscale_delay_s:g}/{replicas.downscale_delay_s:g} s"
        )
        out.append(Arm(name, description, "default", cfg))
    return out


def slo_of(model: ModelConfig) -> tuple[float, float]:
    """(TTFT, time per output token) a request must meet to count as within the objective."""
    slo = model.replicas.autoscaling.slo
    return slo.ttft_p90_s, slo.tpot_p90_s
