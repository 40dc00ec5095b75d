"""Load-generator self-monitoring: process CPU and gevent loop lag, warned about and stamped on records.

A saturated client delays reading the socket, which inflates every TTFT and ITL it measures; these two
numbers tell when that happens. Loop lag = how much later than asked a 100 ms sleep wakes up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
import psutil

logger = logging.getLogger("loadtests.monitor")

LAG_INTERVAL_S = 0.1
SAMPLE_EVERY_S = 1.0
WARN_EVERY_S = 10.0


class SelfMonitor:
    """Samples CPU once a second and loop lag every 100 ms (the max over the last second is reported)."""

    def __init__(
        self,
        cpu_warn_percent: float = 90.0,
        lag_warn_ms: float = 20.0,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.cpu_warn_percent = cpu_warn_percent
        self.lag_warn_ms = lag_warn_ms
        self.on_tick = on_tick  # called every second (the record flusher)
        self.cpu_percent = float("nan")
        self.loop_lag_ms = float("nan")
        self.max_cpu_percent = 0.0
        self.max_loop_lag_ms = 0.0
        self.warnings = 0
        self._window_lag_ms = 0.0
        self._last_warn = -1e9
        self._proc = psutil.Process()
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> None:
        if self._greenlets:
            return
        self._proc.cpu_percent(None)  # prime: the first call always returns 0.0
        self._greenlets = [gevent.spawn(self._lag_loop), gevent.spawn(self._cpu_loop)]

    def stop(self) -> None:
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []

    def _lag_loop(self) -> None:
        while True:
            t0 = time.perf_counter()
            gevent.sleep(LAG_INTERVAL_S)
            lag_ms = max(0.0, (time.perf_counter() - t0 - LAG_INTERVAL_S) * 1000.0)
            self._window_lag_ms = max(self._window_lag_ms, lag_ms)

    def _cpu_loop(self) -> None:
        while True:
            gevent.sleep(SAMPLE_EVERY_S)
            self.sample()
            if self.on_tick is not None:
                try:
                    self.on_tick()
                except Exception:
                    logger.exception("self-monitor tick failed")

    def sample(self) -> None:
        """Take one CPU sample, close the loop-lag window, warn if saturated."""
        self.cpu_percent = self._proc.cpu_percent(None)
        self.loop_lag_ms = self._window_lag_ms
        self._window_lag_ms = 0.0
        self.max_cpu_percent = max(self.max_cpu_percent, self.cpu_percent)
        self.max_loop_lag_ms = max(self.max_loop_lag_ms, self.loop_lag_ms)
        if self.cpu_percent > self.cpu_warn_percent or self.loop_lag_ms > self.lag_warn_ms:
            self.warnings += 1
            now = time.monotonic()
            if now - self._last_warn >= WARN_EVERY_S:
                self._last_warn = now
                # high lag with low CPU: this process is runnable but not running (other processes
                # on the machine hold the cores) - just as falsifying for TTFT as a saturated client
                cause = "saturated" if self.cpu_percent > self.cpu_warn_percent else "starved of CPU"
                logger.warning(
                    "load generator %s: CPU %.0f%% (warn > %.0f%%), gevent loop lag %.1f ms "
                    "(warn > %.0f ms); measured TTFT/ITL are inflated - add --processes/workers "
                    "or free the machine",
                    cause,
                    self.cpu_percent,
                    self.cpu_warn_percent,
                    self.loop_lag_ms,
                    self.lag_warn_ms,
                )

    def summary(self) -> str:
        return (
            f"self-monitor: max CPU {self.max_cpu_percent:.0f}%, max loop lag {self.max_loop_lag_ms:.1f} ms, "
            f"{self.warnings} second(s) over a warning threshold"
        )
