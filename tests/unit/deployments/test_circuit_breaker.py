"""The breaker's transitions: closed -> open after N failures -> half-open after open_s -> closed or open."""

from __future__ import annotations

from deployments.circuit_breaker import BreakerState, CircuitBreaker


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
