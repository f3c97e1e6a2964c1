"""Admission at the ingress: per model, a bounded number of requests in flight and a bounded queue behind.

Without it a burst beyond what the engines can take waits inside Serve's handle for as long as the
request timeout allows, and every request's latency grows with the backlog. Here a request either gets
a slot, waits in a short bounded queue for one, or is refused at once:

* queue full                      -> :class:`Rejected` 429 (``rate_limit_error``), with ``Retry-After``;
* queue full while the model has no running replica (scaled to zero, its first replica starting)
                                  -> :class:`Rejected` 503: the model is not overloaded but starting;
* no slot within ``queue_timeout_s`` -> :class:`Rejected` 503 (``service_unavailable_error``), with ``Retry-After``.

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
    """One admitted request's place; :meth:`release` is idempotent, so every exit path may call it."""

    def __init__(self, gate: Gate) -> None:
        self._gate: Gate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            gate, self._gate = self._gate, None
            gate._release()


class Gate:
    """Admission of one model: at most ``max_in_flight`` slots out, at most ``max_queued`` waiting (FIFO)."""

    def __init__(self, max_in_flight: int, config: AdmissionConfig) -> None:
        self.max_in_flight = max_in_flight
        self._config = config
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self, starting: bool = False) -> Slot:
        """A slot now, or after a bounded wait; raises :class:`Rejected` instead of waiting without bound.

        ``starting``: the model has no running replica yet, so a full queue is a cold start, not overload.
        """
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return Slot(self)
        if self.queued >= self._config.max_queued:
            if starting:
                raise Rejected(503, "starting", self._config.retry_after_s)
            raise Rejected(429, "queue_full", self._config.retry_after_s)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self._config.queue_timeout_s)
        except TimeoutError:
            if not waiter.done():
                self._waiters.remove(waiter)
                raise Rejected(503, "queue_timeout", self._config.retry_after_s) from None
        except asyncio.CancelledError:
            # The client left while waiting. A slot handed over in the same instant goes to the next in line.
            if waiter.done():
                self._release()
            else:
                self._waiters.remove(waiter)
            raise
        return Slot(self)  # the releasing request handed its slot over: in_flight already counts us

    def _release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set_result(None)  # the slot passes straight to the next in line
        else:
            self.in_flight -= 1


class Admission:
    """One :class:`Gate` per model served by this ingress replica."""

    def __init__(self, max_in_flight: dict[str, int], config: AdmissionConfig) -> None:
        self._gates = {model: Gate(config.max_in_flight or limit, config) for model, limit in max_in_flight.items()}

    def gate(self, model: str) -> Gate:
        return self._gates[model]
