"""Build the Serve application from an :class:`AppConfig`: one engine deployment per model, one ingress.

Usable as ``serve run serve_app:build_app config=serve_app/configs/local.yaml [speculative=off]``
and from a ``serve deploy`` config (``import_path: serve_app:build_app`` with ``args``).

No ``from __future__ import annotations`` here: Serve reads ``build_app``'s annotation at run time
to turn the ``key=value`` arguments into :class:`BuildArgs`.
"""

import logging
import math
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig

from config import AppConfig, BuildArgs, KvStreamSettings, ModelConfig
from config.engine_validation import engine_none_hash_seed
from deployments.engine.replica import EngineReplica
from deployments.ingress.app import Ingress
from serve_app.placement import replica_placement
from serve_app.serve_options import autoscaling_config, graceful_shutdown_timeout_s, max_ongoing_requests

logger = logging.getLogger(__name__)

ROUTER_CLASS = "deployments.router.request_router:PolicyRequestRouter"


def _local_path(source: str) -> str:
    """Make ``./`` and ``../`` model paths absolute (replicas don't share the caller's cwd)."""
    if source.startswith(("./", "../")):
        return str(Path(source).resolve())
    return source


def localize(model: ModelConfig) -> ModelConfig:
    """The model with relative local paths resolved against the current directory."""
    update: dict[str, Any] = {"target": _local_path(model.target)}
    if model.tokenizer:
        update["tokenizer"] = _local_path(model.tokenizer)
    if model.speculative is not None:
        update["speculative"] = model.speculative.model_copy(
            update={"draft_model": _local_path(model.speculative.draft_model)}
        )
    return model.model_copy(update=update)


def engine_options(
    model: ModelConfig, kv_stream: KvStreamSettings | None = None, request_timeout_s: float = math.inf
) -> dict[str, Any]:
    """Serve deployment options of the model's engine deployment (``request_timeout_s``: the ingress's)."""
    r = model.replicas
    router_kwargs = {  # JSON: they travel in Serve's deployment config
        "model": model.id,
        "routing": model.routing.model_dump(mode="json"),
        "kv_stream": kv_stream.model_dump() if kv_stream is not None else None,
        "none_hash_seed": engine_none_hash_seed(model),
    }
    return {
        "name": model.deployment_name(),
        **replica_placement(model),
        "max_ongoing_requests": max_ongoing_requests(model),
        "autoscaling_config": autoscaling_config(model),
        "health_check_period_s": r.health_check_period_s,
        "graceful_shutdown_timeout_s": graceful_shutdown_timeout_s(model, request_timeout_s),
        "request_router_config": RequestRouterConfig(
            request_router_class=ROUTER_CLASS,
            request_router_kwargs=router_kwargs,
            request_routing_stats_period_s=model.routing.stats_period_s,
        ),
    }


def ingress_options(config: AppConfig) -> dict[str, Any]:
    ing = config.ingress
    return {
        "name": "Ingress",
        "num_replicas": ing.num_replicas,
        "max_ongoing_requests": ing.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": ing.num_cpus},
    }


def admission_limits(config: AppConfig) -> dict[str, int]:
    """Per model id, the requests an ingress replica admits at once: as many as the model's engines take
    at full scale (``max_replicas`` x each replica's ``max_ongoing_requests``)."""
    return {m.id: m.replicas.max_replicas * max_ongoing_requests(m) for m in config.models}


def build_from_config(config: AppConfig) -> Application:
    """The application graph for ``config``: ingress -> {model id: engine deployment}.

    Refused when the endpoint would be open without the config saying so (``auth.allow_anonymous``).
    """
    config.auth.require_key_source()
    models = [localize(m) for m in config.effective_models()]
    for m in models:
        if unpinned := m.unpinned_sources():
            logger.warning(
                "model %r loads %s from the hub without a pinned commit: replicas started at different times may "
                "serve different weights (set revision / tokenizer_revision / speculative.draft_revision)",
                m.id,
                ", ".join(unpinned),
            )
    config = config.model_copy(update={"models": models, "speculative": True})
    engines = {}
    for m in models:
        stream = config.kv_stream(m)
        relay = stream if m.routing.mode == "precise" else None  # engines publish KV events only when precise
        engines[m.id] = (
            serve.deployment(EngineReplica)
            .options(**engine_options(m, stream, config.ingress.request_timeout_s))
            .bind(m, relay, config.ingress.media)
        )
    logger.info(
        "built app %r: %s", config.name, ", ".join(f"{m.id} (dflash={m.speculative is not None})" for m in models)
    )
    return serve.deployment(Ingress).options(**ingress_options(config)).bind(config, engines, admission_limits(config))


def build_app(args: BuildArgs) -> Application:
    """Serve application builder (``serve run serve_app:build_app config=PATH``)."""
    if not isinstance(args, BuildArgs):
        args = BuildArgs.model_validate(args)
    return build_from_config(args.resolve())
