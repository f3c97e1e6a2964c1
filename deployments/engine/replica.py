"""The engine replica: one vLLM ``AsyncLLM`` (target + DFlash drafter on one GPU) inside Serve.

Requests arrive already validated by the ingress as vLLM protocol objects and are answered by
vLLM's own OpenAI serving layer (chat template, ``chat_template_kwargs``, Gemma-4 reasoning and
tool parsing, logprobs, stop, seed), so responses are byte-for-byte what ``vllm serve`` returns.

Every call is an async generator of :data:`Reply` tuples, streamed back to the ingress chunk by
chunk as the engine produces them (no batching window):

* ``("error", status, body)`` — an OpenAI error, and nothing else follows;
* ``("json", 200, body)`` — a whole non-streaming response;
* ``("sse", 200, "data: ...\\n\\n")`` — one server-sent event; the last is ``data: [DONE]``.

When the ingress cancels the call (its client went away), Serve cancels this generator and
vLLM's generator aborts the request in the engine, freeing its KV blocks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from config import KvStreamSettings, MediaConfig, ModelConfig
from config.engine_validation import engine_hash_algo, engine_none_hash_seed
from contracts.engine_report import BlockGeometry, ReplicaReport
from deployments.engine import parser_cache
from deployments.engine.engine_args import vllm_serve_argv
from deployments.engine.kv_events import KvEventRelay, kv_events_config
from deployments.engine.media_fetch import allowed_hosts, fetch_env
from deployments.engine.replica_stats import RecentLatency, ReplicaStats, ReplicaStatsLogger, build_report
from deployments.engine.serve_logging import serve_log_handlers_kept
from deployments.kv_stream import EventStreamWriter
from vllm_plugins import is_installed

logger = logging.getLogger(__name__)

Reply = tuple[str, int, Any]


def _check_environment(model: ModelConfig) -> str | None:
    """Refuse to start where this process's environment contradicts the config; returns the NONE_HASH seed.

    The seed is the one vLLM will derive here (``resolve_none_hash_seed`` reads PYTHONHASHSEED, inherited
    from the node); the routers hash with the seed the config implies, so a node that sets another one
    would silently never hit. Raised here, before the engine takes the GPU, with what to change.
    """
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import resolve_none_hash_seed

    if model.speculative is not None and model.speculative.draft_semantics == "zlab" and not is_installed():
        raise RuntimeError(
            f"model {model.id!r}: speculative.draft_semantics is zlab, but vLLM will not load dflash-serve's "
            "plugin here (install this package into the engine's environment; VLLM_PLUGINS, if set, must "
            "list dflash_serve)"
        )
    expected = engine_none_hash_seed(model)
    if expected is None:
        return None  # a non-cryptographic hash with a random seed: validation allows it only unrouted
    actual = resolve_none_hash_seed(get_hash_fn_by_name(engine_hash_algo(model.engine)))
    if model.routing.policy == "prefix" and actual != expected:
        raise RuntimeError(
            f"model {model.id!r}: this node's PYTHONHASHSEED gives vLLM the block-hash seed {actual!r}, the "
            f"prefix routers hash with {expected!r} (config/engine_validation.py ENGINE_PYTHONHASHSEED) and "
            "would never find a cached prefix: unset PYTHONHASHSEED in the node's environment"
        )
    return expected


class EngineReplica:
    """Serve deployment class; the builder wraps it with per-model options."""

    async def __init__(
        self, model: ModelConfig, kv_stream: KvStreamSettings | None = None, media: MediaConfig | None = None
    ) -> None:
        """``kv_stream`` is given in precise routing mode: the engine's KV events are relayed there. ``media``: the
        app's ``ingress.media``, which the engine applies again when it fetches (``media_fetch``); None: text-only.
        """
        import os
        import tempfile

        from ray import serve
        from starlette.datastructures import State
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser
        from vllm.v1.engine.async_llm import AsyncLLM

        parser_cache.install()
        seed = _check_environment(model)
        self._model_id = model.id
        self._stats = ReplicaStats()
        self._recent = RecentLatency(model.replicas.autoscaling.stats_window_s)
        self._stats_lock = threading.Lock()
        self._ongoing = 0
        self._relay: KvEventRelay | None = None
        events_config = None
        if kv_stream is not None:
            if seed is None:  # config validation refuses it; kept explicit, the relay cannot work without
                raise RuntimeError(f"model {model.id!r}: precise routing needs reproducible block hashes (sha256)")
            replica_id = serve.get_replica_context().replica_id.unique_id
            endpoint = f"ipc://{tempfile.gettempdir()}/dflash-kv-{replica_id}.sock"
            writer = EventStreamWriter(kv_stream)
            self._relay = KvEventRelay(replica_id, endpoint, writer, kv_stream.snapshot_period_s, seed)
            events_config = kv_events_config(endpoint)

        media = media or MediaConfig()
        os.environ.update(fetch_env(media))  # this replica's process fetches the media its requests name
        with serve_log_handlers_kept():  # vLLM's logging setup would close Serve's replica log handler
            args = make_arg_parser(FlexibleArgumentParser()).parse_args(vllm_serve_argv(model, events_config))
            args.allowed_media_domains = allowed_hosts(media)
            validate_parsed_serve_args(args)
            engine_args = AsyncEngineArgs.from_cli_args(args)
            vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
            logger.info("starting engine for %s (speculative=%s)", model.id, model.speculative is not None)
            self._engine = AsyncLLM.from_vllm_config(
                vllm_config=vllm_config,
                usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=[ReplicaStatsLogger.factory(self._stats, self._recent, self._stats_lock)],
                enable_log_requests=False,
                disable_log_stats=False,
            )
            state = State()
            await init_app_state(self._engine, state, args, await self._engine.get_supported_tasks())
        # The KV block size vLLM settled on (hybrid models may change the requested one); routers hash
        # prompts with it so their blocks line up with the engine's prefix cache.
        self._block_size = vllm_config.cache_config.block_size
        self._chat = state.openai_serving_chat
        self._completion = state.openai_serving_completion
        logger.info("engine for %s ready", model.id)

    async def chat(self, request: Any, routing: Any = None) -> AsyncIterator[Reply]:
        """``routing`` is the router's hint (read by the request router in the caller), unused here."""
        async for reply in self._serve(self._chat.create_chat_completion(request, None)):
            yield reply

    async def completions(self, request: Any, routing: Any = None) -> AsyncIterator[Reply]:
        async for reply in self._serve(self._completion.create_completion(request, None)):
            yield reply

    async def render_chat_ids(self, request: Any) -> list[int] | dict[str, Any]:
        """vLLM's own rendering of a chat request (its prompt token ids), or its error body.

        The ingress renders chat prompts itself, once, for routing and for the engine; this is the
        reference it must match (tests compare the two on every request shape we forward).
        """
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        result = await self._chat.render_chat_request(request)
        if isinstance(result, ErrorResponse):
            return result.model_dump(mode="json")
        _conversation, engine_inputs = result
        return list(engine_inputs[0]["prompt_token_ids"])

    async def _serve(self, call: Awaitable[Any]) -> AsyncIterator[Reply]:
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse
        from vllm.entrypoints.serve.exception_handling.error_response import create_error_response
        from vllm.v1.engine.exceptions import EngineDeadError

        self._ongoing += 1
        try:
            try:
                result = await call
            except EngineDeadError:
                raise  # not the client's fault: fail the replica's health check and let Serve retry
            except Exception as exc:  # noqa: BLE001 - vLLM signals bad input with exceptions too
                result = create_error_response(exc)
            if isinstance(result, ErrorResponse):
                yield ("error", int(result.error.code), result.model_dump(mode="json"))
            elif hasattr(result, "model_dump"):
                yield ("json", 200, result.model_dump(mode="json"))
            else:
                async for chunk in result:
                    yield ("sse", 200, chunk)
        finally:
            self._ongoing -= 1

    async def check_health(self) -> None:
        """Serve's health probe: raises when the engine core has died, so Serve replaces us."""
        await self._engine.check_health()

    def report(self) -> ReplicaReport:
        """Load, cache geometry and DFlash counters, as reported to routers and the autoscaler."""
        learnt = self._relay.geometry if self._relay is not None else None
        with self._stats_lock:
            return build_report(
                self._stats,
                self._recent.snapshot(time.monotonic()),
                learnt or BlockGeometry.uniform(self._block_size),
                ongoing_requests=self._ongoing,
                # Requests the engine still tracks: 0 only once aborted or finished requests are gone.
                engine_unfinished_requests=self._engine.output_processor.get_num_unfinished_requests(),
            )

    def describe(self) -> dict[str, Any]:
        """This replica's id, process id and report (for tools and tests that broadcast to every replica)."""
        import os

        from ray import serve

        return {
            "replica_id": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "report": self.report(),
        }

    def record_routing_stats(self) -> dict[str, float]:
        """Serve's routing stats: the report on the wire (``ReplicaReport.from_wire`` reads it in the router)."""
        return self.report().to_wire()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics: the same record (deployments/autoscaler.py reads it)."""
        return self.report().to_wire()

    def metrics_text(self) -> str:
        """This replica's vLLM Prometheus metrics (the ``vllm:`` families), for the ingress to sum."""
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode()

    def engine_pids(self) -> list[int]:
        """Process ids of this replica's engine processes (engine core and workers), for fault tests."""
        import psutil

        return [p.pid for p in psutil.Process().children(recursive=True)]

    def __del__(self) -> None:
        engine = getattr(self, "_engine", None)
        if engine is not None:
            engine.shutdown()
        relay = getattr(self, "_relay", None)
        if relay is not None:
            relay.close()
