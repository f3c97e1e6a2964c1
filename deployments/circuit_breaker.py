"""A circuit breaker for a dependency that can stop answering (Redis): fail fast while it is away.

Without one, a blackholed Redis costs every request its client timeout before the configured fail-open or
fail-closed answer; with it, after ``failures`` consecutive failures the breaker opens and calls fail at
once for ``open_s``, then one trial call is let through (half-open): success closes it, failure reopens it.
The state machine is pure (the clock is injected), so its transitions are unit-tested without any I/O;
:meth:`CircuitBreaker.guard` is the one way callers put an awaitable through it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from typing import TypeVar

T = TypeVar("T")


class CircuitOpen(Exception):
    """The dependency was not tried: the breaker is open after consecutive failures."""


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failures: int, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_out = False
        self.rejected = 0  # calls refused without trying, since start

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        return BreakerState.HALF_OPEN if self._clock() - self._opened_at >= self._open_s else BreakerState.OPEN

    def allow(self) -> bool:
        """Whether to try the dependency now; in half-open state only one trial is out at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_out:
            self._trial_out = True
            return True
        self.rejected += 1
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._trial_out = False

    def abandon(self) -> None:
        """A call let through ended with no outcome (cancelled): a half-open breaker's trial is free again.

        Without this, a trial whose client left would hold the only half-open slot for good.
        """
        self._trial_out = False

    def failure(self) -> bool:
        """Record a failed call; True when this failure opened the breaker (from closed, or a failed trial).

        A failure of a call that was already in flight when the breaker opened restarts the open period but
        returns False, so whoever logs openings logs once per opening, not once per call in flight.
        """
        self._consecutive += 1
        self._trial_out = False
        was_open = self.state is BreakerState.OPEN
        if self._opened_at is not None or self._consecutive >= self._threshold:
            self._opened_at = self._clock()
            return not was_open
        return False

    async def guard(
        self,
        call: Callable[[], Awaitable[T]],
        errors: tuple[type[BaseException], ...],
        on_open: Callable[[BaseException], None],
    ) -> T:
        """``await call()`` through the breaker; raises :class:`CircuitOpen` at once while it is open.

        ``errors`` are the dependency's failures (they count, and are re-raised); ``on_open`` is told the error
        that opened the breaker. Anything else (a cancelled caller, a bug) says nothing about the dependency.
        """
        if not self.allow():
            raise CircuitOpen
        try:
            result = await call()
        except errors as exc:
            if self.failure():
                on_open(exc)
            raise
        except BaseException:
            self.abandon()
            raise
        self.success()
        return result
