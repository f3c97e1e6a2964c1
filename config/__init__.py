"""The one configuration model of dflash-serve.

Every YAML file under ``serve_app/configs/`` is an instance of :class:`AppConfig`; the builder,
the deployments and the tools read their settings from it and from nowhere else. Models are strict
(``extra="forbid"``, frozen) so a typo in a YAML file fails at load time with the field's name
instead of being ignored on a GPU node an hour later.
"""

from __future__ import annotations

from config.app import AppConfig, BuildArgs, KvStreamSettings
from config.engine import EngineConfig, SpeculativeConfig
from config.front import AdmissionConfig, AuthConfig, IngressConfig, MediaConfig
from config.model import ModelConfig
from config.replicas import AutoscalingConfig, ReplicaConfig
from config.routing import RoutingConfig

__all__ = [
    "AdmissionConfig",
    "AppConfig",
    "AuthConfig",
    "AutoscalingConfig",
    "BuildArgs",
    "EngineConfig",
    "IngressConfig",
    "KvStreamSettings",
    "MediaConfig",
    "ModelConfig",
    "ReplicaConfig",
    "RoutingConfig",
    "SpeculativeConfig",
]
