"""Per-expert circuit breaker: closed -> open after N consecutive failures -> half-open trial -> closed."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Passive failure detector for one expert.

    - closed: requests flow; `failure_threshold` consecutive failures open it;
    - open: no requests for `open_s` seconds, then half-open;
    - half-open: exactly one trial request is let through; its success closes the breaker, its failure
      re-opens it for another `open_s`. A passing active health check also moves open -> half-open early,
      so a restarted expert gets traffic back without waiting out the full cool-down.
    """

    def __init__(self, failure_threshold: int, open_s: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._trial_in_flight = False

    def _refresh(self) -> None:
        if self.state is BreakerState.OPEN and self._clock() - self.opened_at >= self.open_s:
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False

    def available(self) -> bool:
        """Whether a request may be sent now (does not reserve the half-open trial)."""
        if self.state is BreakerState.CLOSED:
            return True
        self._refresh()
        return self.state is BreakerState.HALF_OPEN and not self._trial_in_flight

    def acquire(self) -> bool:
        """Reserve the right to send one request; in half-open only the first caller gets it."""
        if self.state is BreakerState.CLOSED:
            return True
        self._refresh()
        if self.state is BreakerState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self._trial_in_flight = False
        self.state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._trial_in_flight = False
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures >= self.failure_threshold:
            self._open()

    def release(self) -> None:
        """A trial that ended without a verdict (e.g. the client went away) frees the half-open slot."""
        self._trial_in_flight = False

    def health_ok(self) -> None:
        """An active health check passed: stop waiting out the cool-down."""
        if self.state is BreakerState.OPEN:
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False

    def _open(self) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = self._clock()
