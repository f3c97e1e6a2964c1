"""The OpenAI-compatible HTTP front of dflash-serve: the FastAPI app and the ``Ingress`` Serve deployment.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models[/{id}]``,
``GET /health``, ``GET /metrics``. The ingress checks auth and the request (JSON, size, schema —
vLLM's own protocol models, so it accepts exactly what ``vllm serve`` accepts: ``validation``),
admits it (``admission``), renders its prompt for the router (``prompt``), sends it to the model's
engine deployment and relays the engine's replies (``dispatch``). Streaming chunks are forwarded the
moment they arrive: no batching window sits between the engine and the client. Client mistakes get
4xx OpenAI errors; a request is never answered with a 500 for bad input.

This module holds the routes only, each delegating to those modules; helpers imported from them are
bound when this module is imported, so ``@serve.ingress`` freezing the module's globals at the class
(see below) concerns only what is defined in this file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from ray import serve
from ray.exceptions import TaskCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from config import AppConfig
from deployments.ingress.access import Access, Caller
from deployments.ingress.admission import Admission, Rejected, Slot
from deployments.ingress.admission_errors import rejection_error
from deployments.ingress.dispatch import Dispatcher, RequestContext
from deployments.ingress.errors import ApiError, error_body
from deployments.ingress.ingress_metrics import CachedText, IngressMetrics, engine_exposition, ingress_exposition
from deployments.ingress.openapi import openapi_document
from deployments.ingress.prompt import RenderedPrompt, load_tokenizer, render_prompt, routing_hint, template_variables
from deployments.ingress.prompt_hasher import PromptHasher
from deployments.ingress.readiness import Readiness
from deployments.ingress.validation import (
    ENDPOINTS,
    protocol,
    read_json_body,
    requested_model,
    sequences,
    unknown_model,
    validated_request,
)
from deployments.proxy_body import carried_body
from deployments.proxy_headers import request_id
from deployments.router.replica_counts import running_replicas

logger = logging.getLogger(__name__)

# FastAPI's own /docs, /redoc and /openapi.json are off: the Ingress serves the schema and /docs itself, only
# where the config asks for them (ingress.openapi_docs), since they map every route for a stranger.
app = FastAPI(
    title="dflash-serve",
    description="OpenAI-compatible endpoint for DFlash speculative decoding",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


# Registered before @serve.ingress(app) below: Serve freezes a copy of the app when it decorates the
# class, and handlers or overrides added to `app` afterwards never reach the replicas.


def _openapi() -> dict[str, Any]:
    """``/openapi.json``: the generation routes with vLLM's request schemas (built once, on first use)."""
    if app.openapi_schema is None:
        app.openapi_schema = openapi_document(app, {path: protocol(kind) for kind, path in ENDPOINTS.items()})
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
    if isinstance(exc, TaskCancelledError):  # the client left mid-stream and Serve cancelled its engine call
        logger.info("%s %s: cancelled, the client went away", request.method, request.url.path)
        return JSONResponse(error_body(499, "Client closed the request.", code="client_closed"), status_code=499)
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body(500, "Internal error in dflash-serve; see the ingress log."), status_code=500)


# serve.ingress pickles the FastAPI app, and with it the route methods and the globals they use, right
# here: a module-level helper of this file that a route calls must be defined above this line, or it
# is missing in the replica (NameError).
@serve.ingress(app)
class Ingress:
    """Serve ingress deployment; one FastAPI app per replica."""

    def __init__(
        self, config: AppConfig, engines: dict[str, DeploymentHandle], admission_limits: dict[str, int]
    ) -> None:
        """``admission_limits``: per model id, the most requests in flight this replica admits (the
        builder's ``serve_app.build.admission_limits``; ``ingress.admission.max_in_flight`` overrides)."""
        self._config = config
        self._engines = engines
        self._models = {m.id: m for m in config.effective_models()}
        self._metrics = IngressMetrics()
        self._exposition = CachedText(self._whole_exposition, config.ingress.metrics_cache_s)
        self._access = Access(config.auth, config.redis_url, config.name, config.redis_password_file)
        self._admission = Admission(admission_limits, config.ingress.admission)
        self._dispatcher = Dispatcher(engines, config.ingress, self._metrics)
        self._readiness = Readiness(
            {
                m.id: (engines[m.id].app_name, engines[m.id].deployment_name)
                for m in config.models
                if m.replicas.min_replicas > 0
            }
        )
        self._created = int(time.time())
        tokenizers = {m.id: load_tokenizer(*m.tokenizer_source()) for m in config.models}
        self._template_inputs = {model_id: template_variables(tok) for model_id, tok in tokenizers.items()}
        self._tokenizers = {m.id: tokenizers[m.id] for m in config.models if m.routing.needs_tokens}
        # Rendering a chat template is CPU work that grows with the conversation: off the event loop, in
        # a bounded pool, under a deadline (see _render).
        self._render_pool = ThreadPoolExecutor(config.ingress.render_workers, thread_name_prefix="prompt-render")
        self._prompt_hasher = PromptHasher()
        protocol("chat"), protocol("completions")  # import vLLM's protocol now, not on the first request

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
            raise unknown_model(model_id, self._models)
        return JSONResponse(self._model_card(model_id))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self) -> Response:
        self._require_docs()
        return JSONResponse(_openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(self) -> Response:
        self._require_docs()
        return get_swagger_ui_html(openapi_url="/openapi.json", title="dflash-serve")

    @app.get("/health")
    async def health(self) -> Response:
        """200 once every model that is not scaled to zero has a running replica, else 503 (``Readiness``)."""
        waiting = await self._readiness.waiting()
        if waiting:
            body = {"status": "starting", "models": sorted(self._models), "waiting_for": waiting}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return JSONResponse({"status": "ok", "models": sorted(self._models)})

    @app.get("/metrics")
    async def metrics(self, request: Request) -> Response:
        if self._config.auth.protect_metrics:
            await self._authorize(request)
        return PlainTextResponse(await self._exposition.get(), media_type="text/plain; version=0.0.4")

    async def _whole_exposition(self) -> str:
        """Every engine's and every ingress replica's series, summed (a broadcast to each deployment)."""
        return await engine_exposition(self._engines) + await ingress_exposition(self._metrics)

    def own_metrics_text(self) -> str:
        """This ingress replica's series and its routers' (the /metrics handler sums every replica's)."""
        return self._metrics.own_text()

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

    def _require_docs(self) -> None:
        if not self._config.ingress.openapi_docs:
            raise ApiError(404, "Not Found", code="not_found")

    async def _authorize(self, request: Request) -> Caller:
        return await self._access.check(request.headers.get("authorization"))

    async def _generate(self, request: Request, kind: str) -> Response:
        start = time.perf_counter()
        endpoint = ENDPOINTS[kind]
        model_label = "unknown"
        try:
            caller = await self._authorize(request)
            self._metrics.bodies.labels("carried" if carried_body(request.scope) is not None else "fetched").inc()
            body = await read_json_body(
                request, self._config.ingress.max_body_bytes, self._config.ingress.body_read_timeout_s
            )
            model_id = requested_model(body)
            if model_id not in self._engines:
                raise unknown_model(model_id, self._models)
            model_label = model_id
            max_model_len = self._models[model_id].engine.max_model_len
            validated = validated_request(
                kind,
                body,
                max_messages=self._config.ingress.max_messages,
                template_inputs=self._template_inputs[model_id],
                limits=self._config.ingress.limits,
                max_model_len=max_model_len,
                media=self._config.ingress.media,
            )
            req = validated.request
            req.request_id = request_id(request.headers.get("x-request-id"))
            slot = await self._admit(model_id, sequences(req))
            response: Response | None = None
            try:
                reservation = await self._access.reserve(caller, validated.token_bound)
                ctx = RequestContext(kind, model_id, req.request_id, start, slot, reservation)
                rendered = await self._render(kind, req, model_id)
                session_id = request.headers.get("x-session-id")
                hint = routing_hint(kind, req, self._models[model_id], rendered, session_id)
                response = await self._dispatcher.dispatch(ctx, req, hint)
            finally:
                if not isinstance(response, StreamingResponse):
                    slot.release()  # a stream releases its slot when it ends
        except ApiError as err:
            self._metrics.requests.labels(model_label, endpoint, str(err.status)).inc()
            return err.response()
        if not isinstance(response, StreamingResponse):
            self._metrics.observe(model_label, endpoint, response.status_code, start)
        return response

    async def _render(self, kind: str, req: Any, model_id: str) -> RenderedPrompt | None:
        """The prompt's token ids and block hashes for the router, made in the pool within the render timeout.

        None where the model's routing needs no tokens, or the rendering failed or ran out of time: the
        request then routes cold and its engine renders the prompt. A rendering that ran out of time
        finishes in its thread and is dropped (it only reads the request).
        """
        tokenizer = self._tokenizers.get(model_id)
        if tokenizer is None:
            return None
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(self._render_pool, self._render_job, tokenizer, kind, req, model_id)
        try:
            return await asyncio.wait_for(job, self._config.ingress.render_timeout_s)
        except TimeoutError:
            self._metrics.render_timeouts.labels(model_id).inc()
            logger.info("request %s: prompt not rendered within the render timeout; routed cold", req.request_id)
            return None

    def _render_job(self, tokenizer: Any, kind: str, req: Any, model_id: str) -> RenderedPrompt | None:
        """In the render pool: the prompt's token ids and, once the model's router has said how, its block hashes."""
        rendered = render_prompt(tokenizer, kind, req)
        if rendered is None:
            return None
        hashes, hashing = self._prompt_hasher.hash(model_id, rendered.token_ids)
        return replace(rendered, block_hashes=hashes, hashed=hashing)

    async def _admit(self, model_id: str, weight: int) -> Slot:
        try:
            gate = self._admission.gate(model_id)
            return await gate.acquire(starting=running_replicas(model_id) == 0, weight=weight)
        except Rejected as rej:
            self._metrics.rejected.labels(model_id, rej.reason).inc()
            raise rejection_error(model_id, rej) from None
