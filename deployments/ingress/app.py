"""The OpenAI-compatible HTTP front of dflash-serve.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models[/{id}]``,
``GET /health``, ``GET /metrics``. The ingress checks auth and the request (JSON, size, schema —
vLLM's own protocol models, so it accepts exactly what ``vllm serve`` accepts), picks the model's
engine deployment by the request's ``model`` and relays the engine's replies. Streaming chunks are
forwarded the moment they arrive: no batching window sits between the engine and the client.
Client mistakes get 4xx OpenAI errors; a request is never answered with a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from ray import serve
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from config import AppConfig
from deployments.ingress.access import Access
from deployments.ingress.admission import Admission, Rejected, Slot
from deployments.ingress.errors import ApiError, error_body, from_validation_error
from deployments.ingress.metrics_merge import merge_expositions
from deployments.ingress.openapi import openapi_document
from deployments.router import metrics as router_metrics
from deployments.router.request_router import RoutingHint, running_replicas
from serve_app.serve_options import max_ongoing_requests

logger = logging.getLogger(__name__)

app = FastAPI(title="dflash-serve", description="OpenAI-compatible endpoint for DFlash speculative decoding")

_ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_DONE = "data: [DONE]\n\n"
_RETRY_BACKOFF_S = 0.5  # doubled at each retry of a request whose replica died
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid JSON number")


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"Request body is not valid UTF-8 (byte {exc.start}).", code="invalid_encoding") from exc
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ApiError(400, f"Request body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object.", code="invalid_json")
    return body


def _check_messages(messages: Any) -> None:
    """OpenAI's rules for ``messages`` that vLLM leaves to the chat template (it accepts any role)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "`messages` must be a non-empty list.", param="messages", code="invalid_messages")
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in CHAT_ROLES:
            raise ApiError(
                400,
                f"Invalid role {role!r} in messages[{i}]; expected one of {sorted(CHAT_ROLES)}.",
                param=f"messages.{i}.role",
                code="invalid_role",
            )


def _load_tokenizer(source: str) -> Any:
    from vllm.tokenizers import get_tokenizer

    return get_tokenizer(source)


_PLAIN_MESSAGE_KEYS = frozenset({"role", "content", "name"})


def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Messages as vLLM's 'string' content format hands them to the template (text parts joined by
    newlines), or None when vLLM transforms them further (tool calls, reasoning, media): those are left
    to vLLM to render."""
    out = []
    for msg in messages:
        if set(msg) - _PLAIN_MESSAGE_KEYS:
            return None
        content = msg.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                return None
            content = "\n".join(str(p.get("text", "")) for p in content)
        out.append({**msg, "content": content})
    return out


def _prompt_token_ids(tokenizer: Any, kind: str, req: Any) -> tuple[list[int], bool]:
    """The prompt as the engine will see it (chat template applied for chat, BOS added for completions),
    and whether it is exactly vLLM's rendering, so that the engine may take it in place of its own."""
    if kind == "completions":
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            return list(prompt), True
        if isinstance(prompt, list):  # a batch: route on its first prompt
            return list(tokenizer.encode(prompt[0] if prompt else "", add_special_tokens=req.add_special_tokens)), False
        return list(tokenizer.encode(prompt, add_special_tokens=req.add_special_tokens)), True
    kwargs = dict(req.chat_template_kwargs or {})
    raw = [m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in req.messages]
    plain = _plain_messages(raw)
    tools = [t.model_dump() for t in req.tools] if req.tools else None  # as vLLM passes them, None fields too
    ids = tokenizer.apply_chat_template(
        plain if plain is not None else raw,
        tools=tools,
        add_generation_prompt=req.add_generation_prompt,
        tokenize=True,
        return_dict=False,
        **kwargs,
    )
    return list(ids), plain is not None


def _replica_died(exc: BaseException) -> bool:
    """Whether a failure is the replica's death (its actor, or its engine core), not the request's fault.

    Defined above the class: ``@serve.ingress`` freezes the class with the module as it is at that line.
    """
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import ReplicaUnavailableError
    from vllm.v1.engine.exceptions import EngineDeadError

    return isinstance(exc, RayActorError | ReplicaUnavailableError | EngineDeadError)


def _materialized(req: Any) -> Any:
    """``req`` with its messages' lazily validated iterables made lists.

    pydantic validates ``Iterable[...]`` fields (a message's content parts, an assistant's tool calls)
    lazily, leaving a ``ValidatorIterator`` that cannot be pickled to the engine replica; iterating here
    also validates the parts, so a bad one is the client's 400, not the replica's failure.
    """
    for msg in getattr(req, "messages", None) or ():
        if isinstance(msg, dict):
            for key, value in msg.items():
                if not isinstance(value, str | bytes | list | dict | int | float | None) and hasattr(value, "__iter__"):
                    msg[key] = list(value)
    return req


def parsed_request(kind: str, body: dict[str, Any]) -> Any:
    """The request the ingress sends on: vLLM's protocol model of ``body``, made picklable."""
    return _materialized(_protocol(kind).model_validate(body))


def _protocol(kind: str) -> type:
    if kind == "chat":
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        return ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest


class _IngressMetrics:
    """The ingress's own Prometheus series (per ingress replica)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dflash_serve_requests",
            "Requests answered by the ingress, by model, endpoint and HTTP status.",
            ["model", "endpoint", "status"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "dflash_serve_time_to_first_byte_seconds",
            "Time from request arrival at the ingress to its first response byte.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.rejected = Counter(
            "dflash_serve_admission_rejections",
            "Requests refused by the ingress's admission (queue_full: 429; starting, queue_timeout: 503), by model.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.retries = Counter(
            "dflash_serve_dispatch_retries",
            "Requests sent again to another replica because theirs died before the first byte, by model.",
            ["model"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dflash_serve_request_duration_seconds",
            "Time from request arrival at the ingress to its last response byte.",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )


# Registered before @serve.ingress(app) below: Serve freezes a copy of the app when it decorates the
# class, and handlers or overrides added to `app` afterwards never reach the replicas.


async def _scrape_replicas(handle: DeploymentHandle, method: str) -> list[str]:
    """The exposition texts of every replica of ``handle`` that answered within 5 s.

    A scrape must not fail because some replica (or all: a model scaled to zero) cannot answer.
    """
    try:
        results = await handle.broadcast(method).results_async(timeout_s=5, return_exceptions=True)
    except Exception as exc:  # noqa: BLE001 - any failure of the broadcast means "no answers"
        logger.debug("no %s from %s: %r", method, handle.deployment_name, exc)
        return []
    return [r for r in results if isinstance(r, str)]


def _openapi() -> dict[str, Any]:
    """``/openapi.json``: the generation routes with vLLM's request schemas (built once, on first use)."""
    if app.openapi_schema is None:
        app.openapi_schema = openapi_document(app, {path: _protocol(kind) for kind, path in _ENDPOINTS.items()})
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]


@app.exception_handler(ApiError)
async def _api_error_handler(request: Request, exc: ApiError) -> Response:
    return exc.response()


@app.exception_handler(StarletteHTTPException)
async def _http_error_handler(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own errors (an unknown path, a wrong method) in the same OpenAI shape as ours."""
    body = error_body(exc.status_code, str(exc.detail))
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


@app.exception_handler(Exception)
async def _unexpected_error_handler(request: Request, exc: Exception) -> Response:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(500, "Internal error in dflash-serve; see the ingress log."), status_code=500)


# serve.ingress pickles the FastAPI app, and with it the route methods and the globals they use, right
# here: a module-level helper that a route calls must be defined above this line, or it is missing in
# the replica (NameError).
@serve.ingress(app)
class Ingress:
    """Serve ingress deployment; one FastAPI app per replica."""

    def __init__(self, config: AppConfig, engines: dict[str, DeploymentHandle]) -> None:
        self._config = config
        self._engines = engines
        self._models = {m.id: m for m in config.effective_models()}
        self._metrics = _IngressMetrics()
        self._access = Access(config.auth, config.redis_url, config.name)
        limits = {m.id: m.replicas.max_replicas * max_ongoing_requests(m) for m in config.models}
        self._admission = Admission(limits, config.ingress.admission)
        self._created = int(time.time())
        self._tokenizers = {
            m.id: _load_tokenizer(m.tokenizer or m.target) for m in config.models if m.routing.needs_tokens
        }
        _protocol("chat"), _protocol("completions")  # import vLLM's protocol now, not on the first request

    # ----------------------------------------------------------------------------- routes

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, "chat")

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._generate(request, "completions")

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        await self._authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card(m) for m in self._models]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request) -> Response:
        await self._authorize(request)
        if model_id not in self._models:
            raise self._unknown_model(model_id)
        return JSONResponse(self._model_card(model_id))

    @app.get("/health")
    async def health(self) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(self._models)})

    @app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        if self._config.auth.protect_metrics:
            await self._authorize(request)
        parts = [await self._engine_metrics(), await self._ingress_metrics()]
        return PlainTextResponse("".join(parts), media_type="text/plain; version=0.0.4")

    def own_metrics_text(self) -> str:
        """This ingress replica's series and its routers' (the /metrics handler sums every replica's)."""
        return generate_latest(self._metrics.registry).decode() + generate_latest(router_metrics.REGISTRY).decode()

    # ----------------------------------------------------------------------------- helpers

    def _model_card(self, model_id: str) -> dict[str, Any]:
        m = self._models[model_id]
        return {
            "id": m.id,
            "object": "model",
            "created": self._created,
            "owned_by": "dflash-serve",
            "root": m.target,
            "max_model_len": m.engine.max_model_len,
            "speculative": None if m.speculative is None else m.speculative.method,
        }

    def _unknown_model(self, model_id: Any) -> ApiError:
        return ApiError(
            404,
            f"The model `{model_id}` does not exist. Available models: {sorted(self._models)}.",
            param="model",
            code="model_not_found",
        )

    async def _authorize(self, request: Request) -> None:
        await self._access.check(request.headers.get("authorization"))

    async def _read_body(self, request: Request) -> dict[str, Any]:
        limit = self._config.ingress.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                413, f"Request body of {declared} bytes exceeds the {limit}-byte limit.", code="body_too_large"
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"Request body exceeds the {limit}-byte limit.", code="body_too_large")
            chunks.append(chunk)
        return _parse_json(b"".join(chunks))

    def _validate(self, kind: str, body: dict[str, Any]) -> Any:
        from pydantic import ValidationError
        from vllm.exceptions import VLLMClientError

        if kind == "chat":
            _check_messages(body.get("messages"))
        try:
            return parsed_request(kind, body)
        except ValidationError as exc:
            raise from_validation_error(exc) from exc
        except VLLMClientError as exc:  # vLLM's own validators raise these past pydantic
            raise ApiError(400, f"Invalid request: {exc}", param=getattr(exc, "parameter", None)) from exc
        except (TypeError, AttributeError, KeyError, IndexError) as exc:
            # Some of vLLM's `mode="before"` validators assume a field's type before pydantic checks it
            # (e.g. `structured_outputs: true` raises AttributeError): still the client's malformed input.
            raise ApiError(400, f"Invalid request: {type(exc).__name__}: {exc}") from exc

    async def _generate(self, request: Request, kind: str) -> Response:
        start = time.perf_counter()
        endpoint = _ENDPOINTS[kind]
        model_label = "unknown"
        try:
            await self._authorize(request)
            body = await self._read_body(request)
            model_id = body.get("model")
            if not isinstance(model_id, str) or not model_id:
                raise ApiError(400, "You must provide a `model` parameter.", param="model", code="missing_model")
            if model_id not in self._engines:
                raise self._unknown_model(model_id)
            model_label = model_id
            if body.pop("kv_transfer_params", None) is not None:
                logger.debug("client kv_transfer_params ignored: no disaggregated prefill here")
            req = self._validate(kind, body)
            req.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            slot = await self._admit(model_id)
            response: Response | None = None
            try:
                hint = self._routing_hint(kind, model_id, req, request)
                response = await self._dispatch(kind, model_id, req, hint, start, slot)
            finally:
                if not isinstance(response, StreamingResponse):
                    slot.release()  # a stream releases its slot when it ends
        except ApiError as err:
            self._metrics.requests.labels(model_label, endpoint, str(err.status)).inc()
            return err.response()
        if not isinstance(response, StreamingResponse):
            self._observe(model_label, endpoint, response.status_code, start)
        return response

    async def _admit(self, model_id: str) -> Slot:
        try:
            return await self._admission.gate(model_id).acquire(starting=running_replicas(model_id) == 0)
        except Rejected as rej:
            self._metrics.rejected.labels(model_id, rej.reason).inc()
            headers = {"Retry-After": str(rej.retry_after_s)}
            if rej.status == 429:
                raise ApiError(
                    429,
                    f"Too many requests for `{model_id}` right now; retry later.",
                    code="overloaded",
                    headers=headers,
                ) from None
            if rej.reason == "starting":
                raise ApiError(
                    503,
                    f"`{model_id}` is starting (no replica running yet) and its queue is full; retry later.",
                    code="model_starting",
                    headers=headers,
                ) from None
            raise ApiError(
                503,
                f"No capacity for `{model_id}` became free in time; retry later.",
                code="queue_timeout",
                headers=headers,
            ) from None

    def _routing_hint(self, kind: str, model_id: str, req: Any, request: Request) -> RoutingHint:
        """Token ids (and session key) the router needs; routing falls back to cold, never fails a request."""
        routing = self._models[model_id].routing
        session = None
        if routing.session_affinity:
            session = request.headers.get("x-session-id") or getattr(req, "user", None)
        tokenizer = self._tokenizers.get(model_id)
        token_ids: list[int] = []
        if tokenizer is not None:
            exact = False
            try:
                token_ids, exact = _prompt_token_ids(tokenizer, kind, req)
            except Exception as exc:  # noqa: BLE001 - e.g. a template error vLLM will report properly
                logger.debug("request %s routed without its prompt tokens: %r", req.request_id, exc)
            # When our ids are not exactly vLLM's (tool-call history, media), vLLM renders the prompt
            # itself and the router routes on our close approximation.
            if exact and kind == "completions" and isinstance(req.prompt, str):
                req.prompt = token_ids  # tokenized once: the engine takes these ids as the prompt
            elif exact and kind == "chat" and not req.echo:
                # Tokenized once: vLLM's chat layer takes forwarded ids in place of its own rendering
                # (its disaggregated-serving path), still parsing reasoning and tool calls as usual.
                req.kv_transfer_params = {"prompt_token_ids": token_ids}
        return RoutingHint(token_ids=tuple(token_ids), session_key=session)

    async def _dispatch(
        self, kind: str, model_id: str, req: Any, hint: RoutingHint, start: float, slot: Slot
    ) -> Response:
        handle = self._engines[model_id].options(stream=True)
        timeout = self._config.ingress.request_timeout_s
        retries = self._config.ingress.dispatch_retries
        for attempt in range(retries + 1):
            gen: DeploymentResponseGenerator = getattr(handle, kind).remote(req, routing=hint)
            left = timeout - (time.perf_counter() - start)
            try:
                first = await asyncio.wait_for(gen.__anext__(), timeout=max(left, 0.001))
                break
            except TimeoutError as exc:
                gen.cancel()
                raise ApiError(504, f"No response from the model within {timeout:g} s.", code="timeout") from exc
            except StopAsyncIteration as exc:
                raise ApiError(503, "The model replica ended the request without an answer; retry.") from exc
            except Exception as exc:
                retry_in = _RETRY_BACKOFF_S * 2**attempt
                if attempt < retries and _replica_died(exc) and left > retry_in:
                    # Nothing reached the client yet and the engine never saw a client error: send it
                    # again. The router drops a dead actor at once; a dead engine core fails its health
                    # check within the period, so the backoff gives Serve time to take it out.
                    logger.warning(
                        "request %s: replica of %s died before the first byte (%r); retrying",
                        req.request_id,
                        model_id,
                        exc,
                    )
                    self._metrics.retries.labels(model_id).inc()
                    await asyncio.sleep(retry_in)
                    continue
                logger.warning("request %s to %s failed before its first byte: %r", req.request_id, model_id, exc)
                raise ApiError(
                    503,
                    "The model is unavailable right now; retry.",
                    code="replica_unavailable",
                    headers={"Retry-After": "1"},
                ) from exc
        reply_kind, status, payload = first
        if reply_kind == "error":  # vLLM's error, re-shaped so that every error has the same types
            err = payload.get("error", {})
            raise ApiError(status, str(err.get("message", "The request failed.")), param=err.get("param"))
        # A non-streamed answer's first byte is its whole body: observed too, so the dashboard's
        # time-to-first-byte covers every successful request, streamed or not.
        self._metrics.ttft.labels(model_id, _ENDPOINTS[kind]).observe(time.perf_counter() - start)
        if reply_kind == "json":
            return JSONResponse(payload, status_code=status)
        return StreamingResponse(
            self._relay(payload, gen, model_id, _ENDPOINTS[kind], start, req.request_id, slot),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _relay(
        self,
        first: str,
        gen: DeploymentResponseGenerator,
        model_id: str,
        endpoint: str,
        start: float,
        request_id: str,
        slot: Slot,
    ) -> AsyncIterator[str]:
        """Forward SSE chunks as they come; a replica lost mid-stream ends the stream cleanly."""
        status = 200
        try:
            yield first
            async for _, _, chunk in gen:
                yield chunk
        except Exception as exc:  # noqa: BLE001 - the replica died under a running stream
            status = 503
            logger.warning("stream %s from %s broke: %r", request_id, model_id, exc)
            err = error_body(
                503, "The model replica failed while streaming; the response is incomplete.", code="replica_failed"
            )
            yield f"data: {json.dumps(err)}\n\n"
            yield _DONE
        finally:
            gen.cancel()  # no-op when finished; aborts the engine request when the client left
            slot.release()
            self._observe(model_id, endpoint, status, start)

    def _observe(self, model: str, endpoint: str, status: int, start: float) -> None:
        self._metrics.requests.labels(model, endpoint, str(status)).inc()
        self._metrics.latency.labels(model, endpoint).observe(time.perf_counter() - start)

    async def _ingress_metrics(self) -> str:
        """Every ingress replica's own and routing series, summed: a scrape through the load balancer
        sees the whole front, not whichever replica answered."""
        ctx = serve.get_replica_context()
        handle = serve.get_deployment_handle(ctx.deployment, app_name=ctx.app_name)
        texts = await _scrape_replicas(handle, "own_metrics_text") or [self.own_metrics_text()]
        return merge_expositions(texts, prefix="dflash_")

    async def _engine_metrics(self) -> str:
        """vLLM metrics of every engine replica, summed per model, plus replica counts."""
        texts: list[str] = []
        lines = [
            "# HELP dflash_serve_engine_replicas Engine replicas that answered this scrape.",
            "# TYPE dflash_serve_engine_replicas gauge",
        ]
        for model_id, handle in self._engines.items():
            answered = await _scrape_replicas(handle, "metrics_text")
            texts += answered
            lines.append(f'dflash_serve_engine_replicas{{model="{model_id}"}} {len(answered)}')
        return merge_expositions(texts) + "\n".join(lines) + "\n"
