"""A handle on the app the ``served`` fixture runs: its URL, its config, and its replicas' own views."""

from __future__ import annotations

from dataclasses import dataclass

from config import AppConfig
from contracts.engine_report import ReplicaReport
from tools.redis_server import RedisServer


@dataclass(frozen=True)
class Served:
    base_url: str  # http://127.0.0.1:PORT
    config: AppConfig
    redis: RedisServer

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def engine_handle(self, model_id: str):
        from ray import serve

        model = next(m for m in self.config.models if m.id == model_id)
        return serve.get_deployment_handle(model.deployment_name(), app_name=self.config.name)

    def ingress_metrics(self) -> list[str]:
        """Each ingress replica's own Prometheus text (its routers' series included)."""
        from ray import serve

        handle = serve.get_deployment_handle("Ingress", app_name=self.config.name)
        return handle.broadcast("own_metrics_text").results(timeout_s=30)

    def replica_reports(self, model_id: str) -> dict[str, ReplicaReport]:
        """The report of every replica of the model, by replica id."""
        results = self.engine_handle(model_id).broadcast("describe").results(timeout_s=30)
        return {r["replica_id"]: r["report"] for r in results}
