"""Serve's controller around a policy, on the simulator's clock: what ``_apply_autoscaling_config`` does.

Serve wraps every policy (its default included) the same way: the cold-start fast path from zero
replicas, upscaling/downscaling factors, ``upscale_delay_s`` / ``downscale_delay_s`` and the min/max
bounds. This module calls Serve's own helpers for each step (Ray 2.60's ``ray.serve.autoscaling_policy``),
passing the simulated time where Serve reads the wall clock, so both policies meet the same
controller they meet in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ray.serve._private.common import DeploymentID
from ray.serve.autoscaling_policy import (
    _apply_delay_logic,
    _apply_scaling_factors,
    _extract_internal_policy_state,
    _get_cold_start_scale_up_replicas,
)
from ray.serve.config import AutoscalingConfig, AutoscalingContext

PolicyFn = Callable[[AutoscalingContext], tuple[float, dict[str, Any]]]


class ControlLoop(Protocol):
    """What the simulated cluster calls every control tick: Serve's controller, or a fixed fleet."""

    def tick(
        self,
        *,
        now: float,
        target: int,
        running: list[str],
        total_num_requests: float,
        total_queued_requests: float,
        metrics: dict[str, dict[str, float]],
    ) -> int: ...


class StaticLoop:
    """A fleet of ``replicas`` that never scales: the baseline an autoscaler has to beat on cost."""

    def __init__(self, replicas: int) -> None:
        self.replicas = replicas

    def tick(
        self,
        *,
        now: float,
        target: int,
        running: list[str],
        total_num_requests: float,
        total_queued_requests: float,
        metrics: dict[str, dict[str, float]],
    ) -> int:
        """Always the fleet's size, whatever the load."""
        return self.replicas


class ServeLoop:
    """One deployment's autoscaling state in the controller: call :meth:`tick` each control-loop period."""

    def __init__(self, policy: PolicyFn, config: AutoscalingConfig, name: str = "Engine") -> None:
        self._policy = policy
        self._config = config
        self._id = DeploymentID(name=name, app_name="sim")
        self._state: dict[str, Any] = {}

    def tick(
        self,
        *,
        now: float,
        target: int,
        running: list[str],
        total_num_requests: float,
        total_queued_requests: float,
        metrics: dict[str, dict[str, float]],
    ) -> int:
        """The new target replica count."""
        cfg = self._config
        ctx = AutoscalingContext(
            deployment_id=self._id,
            deployment_name=self._id.name,
            app_name=self._id.app_name,
            current_num_replicas=len(running),
            target_num_replicas=target,
            running_replicas=running,  # type: ignore[arg-type]
            total_num_requests=total_num_requests,
            total_queued_requests=total_queued_requests,
            aggregated_metrics=metrics,  # type: ignore[arg-type]
            raw_metrics={},
            capacity_adjusted_min_replicas=cfg.min_replicas,
            capacity_adjusted_max_replicas=cfg.max_replicas,
            policy_state=dict(self._state),
            last_scale_up_time=None,
            last_scale_down_time=None,
            current_time=now,
            config=cfg,
        )
        cold = _get_cold_start_scale_up_replicas(ctx)
        if cold is not None:
            return self._bound(cold)
        previous = dict(self._state)
        desired, user_state = self._policy(ctx)
        desired = _apply_scaling_factors(desired, ctx.current_num_replicas, cfg)
        if ctx.current_num_replicas == 0 and desired > 0:
            self._state = {**user_state, **_extract_internal_policy_state(previous)}
            return self._bound(desired)
        final, internal = _apply_delay_logic(
            max(0, desired), target, cfg, _extract_internal_policy_state(previous), _now=now
        )
        self._state = {**user_state, **internal}
        return self._bound(final)

    def _bound(self, n: float) -> int:
        return max(self._config.min_replicas, min(self._config.max_replicas, int(n)))
