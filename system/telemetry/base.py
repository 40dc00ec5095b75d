"""A background sampler thread that appends rows to a CSV file at a fixed rate, with epoch timestamps."""

from __future__ import annotations

import csv
import logging
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


class CsvSampler:
    """Calls `sample()` every `interval_s` on a daemon thread and appends its rows to `path`.

    Subclasses set `HEADER` and implement `sample() -> list[list]`. The header is written at start even when
    nothing is ever sampled, so every step directory has the same files. Rows are flushed after every tick
    (a crash loses at most one interval). A sample that raises is logged and counted, never fatal: telemetry
    must not kill an experiment.
    """

    HEADER: tuple[str, ...] = ()
    # True: the first sample is taken one interval after start (rates such as CPU % need a baseline)
    DELAY_FIRST: bool = False

    def __init__(self, path: str | Path, interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self.rows_written = 0
        self.errors = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fh: Any = None
        self._csv: Any = None

    # subclasses -----------------------------------------------------------------------------------------
    def setup(self) -> None:
        """Called once before the first sample (on the caller's thread)."""

    def sample(self) -> list[list[Any]]:
        raise NotImplementedError

    def teardown(self) -> None:
        """Called once after the last sample."""

    @property
    def active(self) -> bool:
        """False when there is nothing to sample (e.g. no GPU): the header is written, no thread starts."""
        return True

    # lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> CsvSampler:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._csv = csv.writer(self._fh)
        if new:
            self._csv.writerow(self.HEADER)
            self._fh.flush()
        self.setup()
        if self.active:
            self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
            self._thread.start()
        return self

    def _tick(self) -> None:
        try:
            rows = self.sample()
        except Exception as e:  # a flaky source must not end the run
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            if self.errors <= 3:
                log.warning("%s: sample failed: %s", type(self).__name__, self.last_error)
            return
        if rows:
            self._csv.writerows(rows)
            self._fh.flush()
            self.rows_written += len(rows)

    def _loop(self) -> None:
        # fixed-rate schedule (not fixed-delay), so samples stay on a 1 Hz grid even when one is slow
        next_t = time.monotonic()
        if self.DELAY_FIRST:
            next_t += self.interval_s
            if self._stop.wait(self.interval_s):
                return
        while not self._stop.is_set():
            self._tick()
            next_t += self.interval_s
            delay = next_t - time.monotonic()
            if delay < 0:  # fell behind: skip missed ticks rather than bursting
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 3 * self.interval_s))
            self._thread = None
        if self._fh is not None:
            try:
                self.teardown()
            finally:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> CsvSampler:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
