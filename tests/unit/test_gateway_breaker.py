"""Circuit breaker state machine, driven by a fake clock."""

from __future__ import annotations

from system.gateway.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_threshold_consecutive_failures() -> None:
    b = CircuitBreaker(3, 5.0, Clock())
    b.record_failure()
    b.record_failure()
    b.record_success()  # resets the count: failures must be consecutive
    b.record_failure()
    b.record_failure()
    assert b.state is BreakerState.CLOSED and b.available()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    assert not b.available() and not b.acquire()


def test_half_open_lets_exactly_one_trial_through() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 5.0, clock)
    b.record_failure()
    clock.t += 4.9
    assert not b.available()
    clock.t += 0.2
    assert b.available()
    assert b.acquire()
    assert b.state is BreakerState.HALF_OPEN
    assert not b.acquire() and not b.available()  # the trial is out
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.acquire() and b.acquire()


def test_failed_trial_reopens_and_restarts_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(2, 5.0, clock)
    b.record_failure()
    b.record_failure()
    clock.t += 5.0
    assert b.acquire()
    b.record_failure()
    assert b.state is BreakerState.OPEN
    clock.t += 4.0
    assert not b.available()
    clock.t += 1.0
    assert b.available()


def test_released_trial_frees_the_slot_and_health_ok_skips_cooldown() -> None:
    clock = Clock()
    b = CircuitBreaker(1, 60.0, clock)
    b.record_failure()
    assert not b.available()
    b.health_ok()  # active check passed: try again without waiting 60 s
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire()
    b.release()  # the trial's client went away: no verdict
    assert b.acquire()
