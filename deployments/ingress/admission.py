"""Admission at the ingress: per model, a bounded number of requests in flight and a bounded queue behind.

Without it a burst beyond what the engines can take waits inside Serve's handle for as long as the
request timeout allows, and every request's latency grows with the backlog. Here a request either gets
a slot, waits in a short bounded queue for one, or is refused at once:

* queue full                      -> :class:`Rejected` 429 (``rate_limit_error``), with ``Retry-After``;
* queue full while the model has no running replica (scaled to zero, its first replica starting)
                                  -> :class:`Rejected` 503: the model is not overloaded but starting;
* no slot within ``queue_timeout_s`` -> :class:`Rejected` 503 (``service_unavailable_error``), with ``Retry-After``.

A request counts by the sequences it runs on the engine (``n`` choices of each prompt), up to the whole
limit: a request with ``n: 8`` is eight concurrent generations, not one, and admitting it as one would let
a few such requests hold every engine slot. The queue is FIFO by arrival, whatever the weights.

The same queue holds requests while a model scaled to zero starts its first replica: its wait timeout
is ``AppConfig.ingress.admission.queue_timeout_s``. Pure asyncio: no Ray, no I/O (unit-tested directly).
Limits are per ingress replica; the front as a whole admits ``num_replicas`` times as much.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from config import AdmissionConfig


@dataclass(frozen=True)
class Rejected(Exception):
    """A request refused admission; ``status`` is 429 (queue full) or 503 (starting, or waited too long)."""

    status: int
    reason: str  # "queue_full" | "starting" | "queue_timeout"
    retry_after_s: int


class Slot:
    """One admitted request's place (``weight`` sequences); :meth:`release` is idempotent, so every exit path
    may call it."""

    def __init__(self, gate: Gate, weight: int = 1) -> None:
        self._gate: Gate | None = gate
        self.weight = weight

    def release(self) -> None:
        if self._gate is not None:
            gate, self._gate = self._gate, None
            gate._release(self.weight)


class Gate:
    """Admission of one model: at most ``max_in_flight`` sequences out, at most ``max_queued`` requests waiting
    (FIFO)."""

    def __init__(self, max_in_flight: int, config: AdmissionConfig) -> None:
        self.max_in_flight = max_in_flight
        self._config = config
        self.in_flight = 0
        self._waiters: deque[tuple[asyncio.Future[None], int]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self, starting: bool = False, weight: int = 1) -> Slot:
        """A slot of ``weight`` sequences now, or after a bounded wait; raises :class:`Rejected` instead of
        waiting without bound. A weight above the limit counts as the whole limit (it runs alone).

        ``starting``: the model has no running replica yet, so a full queue is a cold start, not overload.
        """
        weight = max(1, min(weight, self.max_in_flight))
        if self.in_flight + weight <= self.max_in_flight and not self._waiters:
            self.in_flight += weight
            return Slot(self, weight)
        if self.queued >= self._config.max_queued:
            if starting:
                raise Rejected(503, "starting", self._config.retry_after_s)
            raise Rejected(429, "queue_full", self._config.retry_after_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (waiter, weight)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self._config.queue_timeout_s)
        except TimeoutError:
            if not waiter.done():
                self._waiters.remove(entry)
                self._admit_waiters()  # a heavy request leaving the head may let lighter ones behind it in
                raise Rejected(503, "queue_timeout", self._config.retry_after_s) from None
        except asyncio.CancelledError:
            # The client left while waiting. A place handed over in the same instant goes to the next in line.
            if waiter.done():
                self._release(weight)
            else:
                self._waiters.remove(entry)
                self._admit_waiters()
            raise
        return Slot(self, weight)  # _admit_waiters counted us in

    def _release(self, weight: int) -> None:
        self.in_flight -= weight
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        """Admit waiting requests in arrival order while the next one fits (it never waits behind a later one)."""
        while self._waiters and self.in_flight + self._waiters[0][1] <= self.max_in_flight:
            waiter, weight = self._waiters.popleft()
            self.in_flight += weight
            waiter.set_result(None)


class Admission:
    """One :class:`Gate` per model served by this ingress replica."""

    def __init__(self, max_in_flight: dict[str, int], config: AdmissionConfig) -> None:
        self._gates = {model: Gate(config.max_in_flight or limit, config) for model, limit in max_in_flight.items()}

    def gate(self, model: str) -> Gate:
        return self._gates[model]
