"""Sending an admitted request to its model's engine deployment, and relaying the answer to the client.

The engine replica answers with a stream of ``(kind, status, payload)`` replies
(:mod:`deployments.engine.replica`). Until the first reply arrives nothing has reached the client,
so a replica that died is retried on another (with backoff, within the request timeout); after it,
a streamed answer is relayed chunk by chunk the moment each arrives, and a replica lost mid-stream
ends the stream with an error event instead of a hung connection. Everything per request that this
needs travels in one :class:`RequestContext`.

A request that reserved tokens from its key's budget is settled here, once its usage is known: a JSON
answer's ``usage``, a stream's final usage chunk (asked of the engine when the client did not ask for
it, and then not relayed). An answer that failed on our side gives the whole reservation back; a
client that left mid-stream gets nothing back (its usage never came).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.responses import JSONResponse, Response, StreamingResponse

from config import IngressConfig
from contracts.engine_report import RoutingHint
from deployments.error_kind import error_kind
from deployments.ingress.access import Reservation
from deployments.ingress.admission import Slot
from deployments.ingress.errors import ApiError, error_body
from deployments.ingress.ingress_metrics import IngressMetrics
from deployments.ingress.validation import ENDPOINTS

logger = logging.getLogger(__name__)

_DONE = "data: [DONE]\n\n"
_RETRY_BACKOFF_S = 0.5  # doubled at each retry of a request whose replica died


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One admitted generation request: what it is, for which model, since when, and its admission slot."""

    kind: str  # "chat" | "completions": the engine method it calls
    model_id: str
    request_id: str
    start: float  # arrival at the ingress, on time.perf_counter()
    slot: Slot  # released once the answer is complete (a stream's when it ends)
    reservation: Reservation | None = None  # tokens taken from the key's budget, settled when it ends

    @property
    def endpoint(self) -> str:
        """The route it came in on, as the metrics label it."""
        return ENDPOINTS[self.kind]


def spent_tokens(usage: Any) -> int | None:
    """Prompt + completion tokens of an OpenAI ``usage`` object; None where there is none."""
    if not isinstance(usage, dict):
        return None
    return int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)


def final_usage(chunk: str) -> Any:
    """The usage in vLLM's last stream chunk (no choices, a usage), else None: one parse per stream."""
    if '"choices":[]' not in chunk or '"usage"' not in chunk:
        return None
    try:
        return json.loads(chunk.removeprefix("data: ")).get("usage")
    except ValueError:
        return None


def ask_for_usage(req: Any) -> bool:
    """Have a streamed ``req`` end with its usage chunk; True when the client had not asked for one (the
    relay then drops it, so the client sees the stream it asked for)."""
    if not getattr(req, "stream", False):
        return False
    options = req.stream_options
    if options is not None and options.include_usage:
        return False
    from vllm.entrypoints.generate.base.protocol import StreamOptions

    req.stream_options = StreamOptions(include_usage=True, continuous_usage_stats=False)
    return True


def replica_died(exc: BaseException) -> bool:
    """Whether a failure is the replica's death (its actor, or its engine core), not the request's fault."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, RayActorError | ReplicaUnavailableError | EngineDeadError)


class Dispatcher:
    """Dispatch to the engine deployments of one ingress replica, with its timeout, retries and metrics."""

    def __init__(self, engines: dict[str, DeploymentHandle], ingress: IngressConfig, metrics: IngressMetrics) -> None:
        self._engines = engines
        self._timeout = ingress.request_timeout_s
        self._idle_timeout = ingress.stream_idle_timeout_s
        self._retries = ingress.dispatch_retries
        self._by_reference = ingress.engine_transport == "ray"
        self._metrics = metrics

    async def dispatch(self, ctx: RequestContext, req: Any, hint: RoutingHint) -> Response:
        """The HTTP response to ``req``: the engine's JSON, or a stream relaying its events."""
        drop_usage = ctx.reservation is not None and ask_for_usage(req)
        try:
            gen, (reply_kind, status, payload) = await self._first_reply(ctx, req, hint)
        except ApiError:
            await _settle(ctx, 0)  # no answer: nothing was spent for the client
            raise
        if reply_kind == "error":  # vLLM's error, re-shaped so that every error has the same types
            await _settle(ctx, 0)
            err = payload.get("error", {})
            raise ApiError(status, str(err.get("message", "The request failed.")), param=err.get("param"))
        # A non-streamed answer's first byte is its whole body: observed too, so the dashboard's
        # time-to-first-byte covers every successful request, streamed or not.
        self._metrics.ttft.labels(ctx.model_id, ctx.endpoint).observe(time.perf_counter() - ctx.start)
        if reply_kind == "json":
            await _settle(ctx, spent_tokens(payload.get("usage")))
            return JSONResponse(payload, status_code=status)
        return StreamingResponse(
            self._relay(payload, gen, ctx, drop_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _first_reply(
        self, ctx: RequestContext, req: Any, hint: RoutingHint
    ) -> tuple[DeploymentResponseGenerator, tuple[str, int, Any]]:
        """The engine call's generator and its first reply; a replica's death before it is retried."""
        handle = self._engines[ctx.model_id].options(stream=True, _by_reference=self._by_reference)
        attempt = 0
        while True:
            gen: DeploymentResponseGenerator = getattr(handle, ctx.kind).remote(req, routing=hint)
            left = self._timeout - (time.perf_counter() - ctx.start)
            try:
                return gen, await asyncio.wait_for(gen.__anext__(), timeout=max(left, 0.001))
            except TimeoutError as exc:
                gen.cancel()
                raise ApiError(504, f"No response from the model within {self._timeout:g} s.", code="timeout") from exc
            except StopAsyncIteration as exc:
                raise ApiError(503, "The model replica ended the request without an answer; retry.") from exc
            except Exception as exc:
                retry_in = _RETRY_BACKOFF_S * 2**attempt
                if attempt < self._retries and replica_died(exc) and left > retry_in:
                    # Nothing reached the client yet and the engine never saw a client error: send it
                    # again. The router drops a dead actor at once; a dead engine core fails its health
                    # check within the period, so the backoff gives Serve time to take it out.
                    logger.warning(
                        "request %s: replica of %s died before the first byte (%s); retrying",
                        ctx.request_id,
                        ctx.model_id,
                        error_kind(exc),
                    )
                    self._metrics.retries.labels(ctx.model_id).inc()
                    await asyncio.sleep(retry_in)
                    attempt += 1
                    continue
                logger.warning(
                    "request %s to %s failed before its first byte: %s", ctx.request_id, ctx.model_id, error_kind(exc)
                )
                raise ApiError(
                    503,
                    "The model is unavailable right now; retry.",
                    code="replica_unavailable",
                    headers={"Retry-After": "1"},
                ) from exc

    async def _relay(
        self, first: str, gen: DeploymentResponseGenerator, ctx: RequestContext, drop_usage: bool
    ) -> AsyncIterator[str]:
        """Forward SSE chunks as they come; a replica lost mid-stream ends the stream cleanly, and so does one
        that sends nothing for ``ingress.stream_idle_timeout_s`` or runs past ``ingress.request_timeout_s``.

        A metered request's final usage chunk settles its reservation (and is not relayed when only the
        ingress asked for it). The first chunk is never that one: it carries the first choice's delta.
        """
        status, metered, usage = 200, ctx.reservation is not None, None
        deadline = ctx.start + self._timeout
        try:
            yield first
            while True:
                # The timer covers the wait for the engine only, never a yield (the client's own pace).
                wait_s = min(self._idle_timeout, deadline - time.perf_counter())
                try:
                    async with asyncio.timeout(max(wait_s, 0.0)):
                        _, _, chunk = await gen.__anext__()
                except StopAsyncIteration:
                    break
                if metered and (found := final_usage(chunk)) is not None:
                    usage = found
                    if drop_usage:
                        continue
                yield chunk
        except TimeoutError:
            status = 504
            logger.warning("stream %s from %s: no chunk in time; ended", ctx.request_id, ctx.model_id)
            yield _error_event(504, "The model sent nothing in time; the response is incomplete.", "stream_timeout")
            yield _DONE
        except Exception as exc:  # noqa: BLE001 - the replica died under a running stream
            status = 503
            logger.warning("stream %s from %s broke: %s", ctx.request_id, ctx.model_id, error_kind(exc))
            yield _error_event(503, "The model replica failed while streaming; the response is incomplete.")
            yield _DONE
        finally:
            gen.cancel()  # no-op when finished; aborts the engine request when the client left
            ctx.slot.release()
            self._metrics.observe(ctx.model_id, ctx.endpoint, status, ctx.start)
            if metered and (status != 200 or usage is not None):  # a client that left gets nothing back
                await _settle(ctx, 0 if status != 200 else spent_tokens(usage))


def _error_event(status: int, message: str, code: str = "replica_failed") -> str:
    """An OpenAI error as a stream's last event before ``[DONE]``: the client sees why the stream ended."""
    return f"data: {json.dumps(error_body(status, message, code=code))}\n\n"


async def _settle(ctx: RequestContext, spent: int | None) -> None:
    if ctx.reservation is not None:
        await ctx.reservation.settle(spent)
