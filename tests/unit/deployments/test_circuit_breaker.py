"""The breaker's transitions: closed -> open after N failures -> half-open after open_s -> closed or open."""

from __future__ import annotations

import asyncio

import pytest

from deployments.circuit_breaker import BreakerState, CircuitBreaker, CircuitOpen


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_and_fails_fast():
    clock = Clock()
    b = CircuitBreaker(failures=3, open_s=5, clock=clock)
    assert [b.failure() for _ in range(2)] == [False, False] and b.state is BreakerState.CLOSED
    b.success()  # a success in between resets the count
    assert [b.failure() for _ in range(3)] == [False, False, True]
    assert b.state is BreakerState.OPEN
    assert not b.allow() and not b.allow() and b.rejected == 2


def test_half_open_lets_one_trial_through_and_its_outcome_decides():
    clock = Clock()
    b = CircuitBreaker(failures=1, open_s=5, clock=clock)
    b.failure()
    clock.now = 5
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() and not b.allow()  # one trial at a time
    assert b.failure() and b.state is BreakerState.OPEN  # the trial failed: open for another open_s
    clock.now = 9.9
    assert not b.allow()
    clock.now = 10
    assert b.allow()
    b.success()
    assert b.state is BreakerState.CLOSED and b.allow() and b.allow()


def test_an_abandoned_trial_frees_the_half_open_slot():
    clock = Clock()
    b = CircuitBreaker(failures=1, open_s=5, clock=clock)
    b.failure()
    clock.now = 5
    assert b.allow() and not b.allow()
    b.abandon()  # the trial's caller was cancelled before Redis answered
    assert b.allow()


def test_failures_of_calls_in_flight_when_it_opened_do_not_report_another_opening():
    clock = Clock()
    b = CircuitBreaker(failures=2, open_s=5, clock=clock)
    assert [b.failure() for _ in range(2)] == [False, True]
    clock.now = 3
    assert not b.failure()  # a call that was in flight when it opened: no second report...
    clock.now = 6
    assert b.state is BreakerState.OPEN  # ...but the open period restarts from the latest failure
    clock.now = 8
    assert b.state is BreakerState.HALF_OPEN


class Flaky(Exception):
    pass


def test_guard_counts_only_the_dependency_errors_and_refuses_while_open():
    clock = Clock()
    b = CircuitBreaker(failures=2, open_s=5, clock=clock)
    opened: list[BaseException] = []

    async def fails() -> int:
        raise Flaky

    async def works() -> int:
        return 7

    async def bug() -> int:
        raise KeyError

    async def scenario() -> None:
        assert await b.guard(works, (Flaky,), opened.append) == 7
        with pytest.raises(KeyError):  # not the dependency's failure: no count
            await b.guard(bug, (Flaky,), opened.append)
        for _ in range(2):
            with pytest.raises(Flaky):
                await b.guard(fails, (Flaky,), opened.append)
        assert len(opened) == 1 and isinstance(opened[0], Flaky)
        with pytest.raises(CircuitOpen):
            await b.guard(works, (Flaky,), opened.append)
        assert b.rejected == 1
        clock.now = 5
        with pytest.raises(asyncio.CancelledError):  # the trial's caller left: the slot is free again
            await b.guard(_cancelled, (Flaky,), opened.append)
        assert await b.guard(works, (Flaky,), opened.append) == 7
        assert b.state is BreakerState.CLOSED

    asyncio.run(scenario())


async def _cancelled() -> int:
    raise asyncio.CancelledError
