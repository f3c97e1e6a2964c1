"""Serve glue of the SLO policy: runs in the Serve controller, once per control-loop tick.

Serve instantiates :class:`SloPolicy` once per deployment with the JSON ``policy_kwargs`` that
:func:`serve_app.serve_options.autoscaling_config` wrote (a :class:`~autoscaling.policy.PolicyParams`), and
calls it with an ``AutoscalingContext``. The engine replicas' ``record_autoscaling_stats`` records
arrive in ``ctx.aggregated_metrics`` (means over Serve's look-back window); the decision itself is
:func:`autoscaling.policy.decide`.

Each decision that changes the target is logged with its reason; every tick's numbers go to Ray's
metrics (``ray_dflash_autoscaler_*`` on each node's metrics export port, beside Serve's own
``ray_serve_autoscaling_*``), and the last decision sits in the deployment's ``policy_state`` under
``"dflash"``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from autoscaling.policy import Decision, PolicyParams, PolicyState, decide, signals_from_report
from contracts.engine_report import ReplicaReport

# Under Serve's logger: the decisions land in the controller's log (logs/serve/controller_*.log) beside
# Serve's own scaling lines; a plain module logger in the controller prints nothing below WARNING.
logger = logging.getLogger(f"ray.serve.{__name__}")

STATE_KEY = "dflash"


class _Metrics:
    """Ray metrics of the decisions (created in the controller, where the policy runs)."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        tags = ("application", "deployment")
        self.target = Gauge("dflash_autoscaler_target_replicas", "Replicas the SLO policy asks for.", tag_keys=tags)
        self.needed = Gauge("dflash_autoscaler_needed_replicas", "Replicas the current load fills.", tag_keys=tags)
        self.projected = Gauge(
            "dflash_autoscaler_projected_replicas",
            "Replicas the load projected one replica start time ahead fills.",
            tag_keys=tags,
        )
        self.demand = Gauge("dflash_autoscaler_demand_requests", "Requests in flight or queued.", tag_keys=tags)
        self.decisions = Counter(
            "dflash_autoscaler_scale_decisions",
            "Changes of the target replica count, by reason (up:<signal>, down:low-load, down:idle, ...).",
            tag_keys=(*tags, "reason"),
        )

    def export(self, tags: dict[str, str], d: Decision, changed: bool) -> None:
        self.target.set(d.replicas, tags=tags)
        self.needed.set(d.needed, tags=tags)
        self.projected.set(d.projected, tags=tags)
        self.demand.set(d.demand, tags=tags)
        if changed:
            self.decisions.inc(1, tags={**tags, "reason": d.reason})


def _report(metrics: dict[str, dict[Any, float]], replica: Any) -> ReplicaReport | None:
    """One replica's report from Serve's per-metric means; None before it has reported anything."""
    record = {name: by_replica[replica] for name, by_replica in metrics.items() if replica in by_replica}
    return ReplicaReport.from_means(record) if record else None


class SloPolicy:
    """Serve's class-based autoscaling policy: ``AutoscalingPolicy(policy_function=SLO_POLICY, policy_kwargs=...)``."""

    def __init__(self, **params: Any) -> None:
        self._params = PolicyParams(**params)
        self._metrics: _Metrics | None = None

    def __call__(self, ctx: Any) -> tuple[int, dict[str, Any]]:
        metrics: dict[str, dict[Any, float]] = ctx.aggregated_metrics or {}
        signals = [signals_from_report(_report(metrics, rid)) for rid in ctx.running_replicas]
        mine = ctx.policy_state.get(STATE_KEY, {})
        decision = decide(
            signals,
            queued=float(ctx.total_queued_requests or 0.0),
            ongoing=float(ctx.total_num_requests),
            target=ctx.target_num_replicas,
            now=ctx.current_time if ctx.current_time is not None else time.time(),  # the simulator's clock there
            state=PolicyState.from_dict(mine.get("state", {})),
            params=self._params,
        )
        changed = decision.replicas != ctx.target_num_replicas
        if changed:
            logger.info(
                "autoscaling %s/%s: %d -> %d replicas (%s; needed %.2f, projected %.2f, demand %.0f, signal %s)",
                ctx.app_name,
                ctx.deployment_name,
                ctx.target_num_replicas,
                decision.replicas,
                decision.reason,
                decision.needed,
                decision.projected,
                decision.demand,
                decision.signal,
            )
        self._export(ctx, decision, changed)
        last = {"replicas": decision.replicas, "reason": decision.reason, "needed": decision.needed}
        return decision.replicas, {STATE_KEY: {"state": decision.state.to_dict(), "last": last}}

    def _export(self, ctx: Any, decision: Decision, changed: bool) -> None:
        try:
            if self._metrics is None:
                self._metrics = _Metrics()
            self._metrics.export(
                {"application": ctx.app_name or "", "deployment": ctx.deployment_name}, decision, changed
            )
        except Exception:  # metrics must never stop scaling
            logger.exception("could not export autoscaling metrics")
