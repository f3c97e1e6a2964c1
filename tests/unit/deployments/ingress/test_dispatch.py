"""Dispatch and relay (deployments/ingress/dispatch.py) against a fake engine handle: no Ray, no engine."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from ray.exceptions import RayActorError
from starlette.responses import JSONResponse, StreamingResponse

from config import AdmissionConfig, IngressConfig
from contracts.engine_report import RoutingHint
from deployments.ingress import dispatch
from deployments.ingress.admission import Gate
from deployments.ingress.dispatch import Dispatcher, RequestContext
from deployments.ingress.errors import ApiError
from deployments.ingress.ingress_metrics import IngressMetrics

BODY = {"object": "text_completion", "choices": []}


class _Gen:
    """An engine call's reply stream: the items in turn (an exception item is raised), then its end."""

    def __init__(self, *items: Any, delay_s: float = 0) -> None:
        self._items = list(items)
        self._delay_s = delay_s
        self.cancelled = False

    def __aiter__(self) -> _Gen:
        return self

    async def __anext__(self) -> Any:
        await asyncio.sleep(self._delay_s)
        if not self._items:
            raise StopAsyncIteration
        item = self._items.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self) -> None:
        self.cancelled = True


class _Hang(_Gen):
    """A reply stream that stops answering (never ends) after ``after`` items of ``inner``."""

    def __init__(self, inner: _Gen, after: int) -> None:
        super().__init__(*inner._items, delay_s=inner._delay_s)
        self._left = after

    async def __anext__(self) -> Any:
        if self._left == 0:
            await asyncio.Event().wait()  # forever
        self._left -= 1
        return await super().__anext__()


class _Handle:
    """An engine deployment handle whose calls answer with the given streams, one per call."""

    def __init__(self, *gens: _Gen) -> None:
        self._gens = list(gens)
        self.calls: list[tuple[Any, RoutingHint]] = []
        self.by_reference: list[bool] = []
        self.completions = SimpleNamespace(remote=self._remote)

    def options(self, stream: bool, _by_reference: bool) -> _Handle:
        assert stream
        self.by_reference.append(_by_reference)
        return self

    def _remote(self, req: Any, routing: RoutingHint) -> _Gen:
        self.calls.append((req, routing))
        return self._gens.pop(0)


class _Reservation:
    """A key's token reservation: records what the dispatcher settles it with."""

    def __init__(self) -> None:
        self.settled: list[int | None] = []

    async def settle(self, spent: int | None) -> None:
        self.settled.append(spent)


def _run(
    handle: _Handle, req: Any = "req", reservation: _Reservation | None = None, **ingress: Any
) -> tuple[Any, Gate, IngressMetrics]:
    """Dispatch one completions request through ``handle``: the response (a stream's chunks, or the ApiError),
    the admission gate of its slot, and the metrics."""
    metrics = IngressMetrics()
    dispatcher = Dispatcher({"m": handle}, IngressConfig(**ingress), metrics)  # type: ignore[dict-item]
    gate = Gate(1, AdmissionConfig())

    async def run() -> Any:
        slot = await gate.acquire()
        ctx = RequestContext("completions", "m", "r1", time.perf_counter(), slot, reservation)  # type: ignore[arg-type]
        try:
            response = await dispatcher.dispatch(ctx, req, RoutingHint(token_ids=(1, 2)))
        except ApiError as err:
            return err
        if isinstance(response, StreamingResponse):
            return [chunk async for chunk in response.body_iterator]
        return response

    return asyncio.run(run()), gate, metrics


def _sample(metrics: IngressMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_request_context_is_frozen_and_names_its_endpoint():
    ctx = RequestContext(kind="chat", model_id="m", request_id="r", start=0.0, slot=None)  # type: ignore[arg-type]
    assert ctx.endpoint == "/v1/chat/completions"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.model_id = "other"  # type: ignore[misc]
    assert not hasattr(ctx, "__dict__")


def test_a_json_reply_is_the_response_and_its_first_byte_is_observed():
    handle = _Handle(_Gen(("json", 200, BODY)))
    response, _, metrics = _run(handle)
    assert isinstance(response, JSONResponse) and json.loads(response.body) == BODY
    assert handle.calls == [("req", RoutingHint(token_ids=(1, 2)))]
    labels = {"model": "m", "endpoint": "/v1/completions"}
    assert _sample(metrics, "dflash_serve_time_to_first_byte_seconds_count", **labels) == 1


@pytest.mark.parametrize(("transport", "by_reference"), [("ray", True), ("grpc", False)])
def test_the_engine_transport_picks_serves_handle_option(transport: str, by_reference: bool):
    handle = _Handle(_Gen(("json", 200, BODY)))
    _run(handle, engine_transport=transport)
    assert handle.by_reference == [by_reference]  # Ray's object streaming, or Serve's inter-deployment gRPC


def test_an_engine_error_is_reshaped_as_an_api_error():
    body = {"error": {"message": "bad prompt", "param": "prompt"}}
    err, _, _ = _run(_Handle(_Gen(("error", 400, body))))
    assert (err.status, err.message, err.param) == (400, "bad prompt", "prompt")


def test_a_replica_dead_before_the_first_byte_is_retried(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(dispatch, "_RETRY_BACKOFF_S", 0.001)
    response, _, metrics = _run(_Handle(_Gen(RayActorError()), _Gen(("json", 200, BODY))), dispatch_retries=1)
    assert isinstance(response, JSONResponse)
    assert _sample(metrics, "dflash_serve_dispatch_retries_total", model="m") == 1


def test_retries_spent_or_a_non_death_failure_is_503(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(dispatch, "_RETRY_BACKOFF_S", 0.001)
    err, _, _ = _run(_Handle(_Gen(RayActorError()), _Gen(RayActorError())), dispatch_retries=1)
    assert (err.status, err.code, err.headers) == (503, "replica_unavailable", {"Retry-After": "1"})
    err, _, metrics = _run(_Handle(_Gen(RuntimeError("bug"))), dispatch_retries=1)
    assert err.status == 503 and _sample(metrics, "dflash_serve_dispatch_retries_total", model="m") is None


def test_no_first_reply_within_the_timeout_is_504_and_cancels_the_call():
    gen = _Gen(("json", 200, BODY), delay_s=5)
    err, _, _ = _run(_Handle(gen), request_timeout_s=0.05)
    assert (err.status, err.code) == (504, "timeout") and gen.cancelled


def test_a_stream_is_relayed_and_its_end_releases_the_slot():
    gen = _Gen(("sse", 200, "data: 1\n\n"), ("sse", 200, "data: 2\n\n"), ("sse", 200, "data: [DONE]\n\n"))
    chunks, gate, metrics = _run(_Handle(gen))
    assert chunks == ["data: 1\n\n", "data: 2\n\n", "data: [DONE]\n\n"]
    assert gen.cancelled and gate.in_flight == 0
    labels = {"model": "m", "endpoint": "/v1/completions"}
    assert _sample(metrics, "dflash_serve_requests_total", status="200", **labels) == 1


def test_a_replica_lost_mid_stream_ends_the_stream_with_an_error_event():
    gen = _Gen(("sse", 200, "data: 1\n\n"), RayActorError())
    chunks, gate, metrics = _run(_Handle(gen))
    assert chunks[0] == "data: 1\n\n" and chunks[-1] == "data: [DONE]\n\n"
    assert json.loads(chunks[1].removeprefix("data: "))["error"]["code"] == "replica_failed"
    labels = {"model": "m", "endpoint": "/v1/completions"}
    assert _sample(metrics, "dflash_serve_requests_total", status="503", **labels) == 1
    assert gate.in_flight == 0


USAGE_CHUNK = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
STREAM = (("sse", 200, "data: 1\n\n"), ("sse", 200, USAGE_CHUNK), ("sse", 200, "data: [DONE]\n\n"))


def _stream_req(include_usage: bool | None = None) -> SimpleNamespace:
    options = None if include_usage is None else SimpleNamespace(include_usage=include_usage)
    return SimpleNamespace(stream=True, stream_options=options)


def test_a_json_answer_settles_its_reservation_with_its_usage():
    reservation = _Reservation()
    body = BODY | {"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
    _run(_Handle(_Gen(("json", 200, body))), reservation=reservation)
    assert reservation.settled == [12]


def test_no_answer_gives_the_whole_reservation_back():
    for gen in (_Gen(("error", 400, {"error": {"message": "bad"}})), _Gen(("json", 200, BODY), delay_s=5)):
        reservation = _Reservation()
        err, _, _ = _run(_Handle(gen), reservation=reservation, request_timeout_s=0.05)
        assert isinstance(err, ApiError) and reservation.settled == [0]


def test_a_metered_stream_asks_for_its_usage_and_drops_the_chunk_the_client_did_not_ask_for():
    reservation, req = _Reservation(), _stream_req()
    chunks, gate, _ = _run(_Handle(_Gen(*STREAM)), req=req, reservation=reservation)
    assert req.stream_options.include_usage and not req.stream_options.continuous_usage_stats
    assert chunks == ["data: 1\n\n", "data: [DONE]\n\n"]
    assert reservation.settled == [7] and gate.in_flight == 0


def test_a_stream_whose_client_asked_for_usage_keeps_it_and_settles_with_it():
    reservation = _Reservation()
    chunks, _, _ = _run(_Handle(_Gen(*STREAM)), req=_stream_req(include_usage=True), reservation=reservation)
    assert chunks == ["data: 1\n\n", USAGE_CHUNK, "data: [DONE]\n\n"] and reservation.settled == [7]


def test_an_unmetered_stream_is_relayed_untouched():
    req = _stream_req()
    chunks, _, _ = _run(_Handle(_Gen(*STREAM)), req=req)
    assert chunks == [c for _, _, c in STREAM] and req.stream_options is None


@pytest.mark.parametrize(
    ("limits", "reason"),
    [({"stream_idle_timeout_s": 0.05}, "idle"), ({"request_timeout_s": 0.3, "stream_idle_timeout_s": 60}, "deadline")],
)
def test_a_stream_whose_engine_goes_quiet_is_ended_with_an_error_event(limits: dict, reason: str):
    """An engine that stalls mid-stream (idle), or a stream past the request's end-to-end deadline, does not hold
    the client, the admission slot and the key's budget: 504 stream_timeout, [DONE], all released."""
    stalled = _Gen(("sse", 200, "data: 1\n\n"), ("sse", 200, "data: 2\n\n"), delay_s=0.2 if reason == "deadline" else 0)
    stalled._items.append(("sse", 200, "data: never\n\n"))
    reservation = _Reservation()
    hang = _Hang(stalled, after=2 if reason == "idle" else 99)
    chunks, gate, metrics = _run(_Handle(hang), req=_stream_req(), reservation=reservation, **limits)
    assert chunks[-1] == "data: [DONE]\n\n" and "data: never\n\n" not in chunks
    assert json.loads(chunks[-2].removeprefix("data: "))["error"]["code"] == "stream_timeout"
    assert hang.cancelled and gate.in_flight == 0 and reservation.settled == [0]
    labels = {"model": "m", "endpoint": "/v1/completions"}
    assert _sample(metrics, "dflash_serve_requests_total", status="504", **labels) == 1


def test_a_stream_lost_mid_way_gives_the_reservation_back():
    reservation = _Reservation()
    _run(_Handle(_Gen(("sse", 200, "data: 1\n\n"), RayActorError())), req=_stream_req(), reservation=reservation)
    assert reservation.settled == [0]


@pytest.mark.parametrize(
    ("chunk", "usage"),
    [
        (USAGE_CHUNK, {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
        ('data: {"choices":[{"index":0,"text":"\\"choices\\":[] \\"usage\\""}]}\n\n', None),  # quoted in text
        ("data: [DONE]\n\n", None),
        ('data: {"choices":[],"usage":\n\n', None),  # not JSON
    ],
)
def test_final_usage_reads_only_the_usage_chunk(chunk: str, usage: Any):
    assert dispatch.final_usage(chunk) == usage
    assert dispatch.spent_tokens(usage) == (None if usage is None else 7)
