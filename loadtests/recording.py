"""Per-worker recording: one RecordWriter per process, Locust TTFT/E2E events, the self-monitor."""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any

from loadtests.monitor import SelfMonitor
from system.records import (
    OUTCOME_CUT,
    RECORD_FILE_PREFIX,
    RECORD_FILE_SUFFIX,
    RecordWriter,
    RequestRecord,
)

logger = logging.getLogger("loadtests.recording")

REQUEST_TYPE = "SSE"


def make_worker_id() -> str:
    """hostname-pid: unique per process, also across machines and `--processes` forks."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Recorder:
    """Owns this process's record file; `record()` writes the row and fires the Locust events together.

    Writing and firing happen with no gevent switch in between, so the count of records whose outcome is
    not `cut` always equals Locust's `E2E` request count (a request cut off by the end of the step gets a
    record with outcome `cut` and no Locust event: it neither failed nor finished).
    """

    def __init__(self, environment: Any, records_dir: str, cpu_warn: float, lag_warn_ms: float) -> None:
        self.environment = environment
        self.worker_id = make_worker_id()
        self.records_dir = records_dir
        self.monitor = SelfMonitor(cpu_warn, lag_warn_ms, on_tick=self.flush)
        self._writer: RecordWriter | None = None
        self._seq = itertools.count(1)
        self._user_seq = itertools.count(0)

    @property
    def path(self) -> Path | None:
        if not self.records_dir:
            return None
        return Path(self.records_dir) / f"{RECORD_FILE_PREFIX}{self.worker_id}{RECORD_FILE_SUFFIX}"

    @property
    def worker_index(self) -> int:
        return int(getattr(self.environment.runner, "worker_index", 0) or 0)

    def next_user_id(self) -> int:
        # unique across the workers of one run as long as a worker runs < 1e6 users
        return self.worker_index * 1_000_000 + next(self._user_seq)

    def next_request_id(self) -> str:
        return f"{self.worker_id}-{next(self._seq)}"

    def record(self, rec: RequestRecord) -> None:
        rec.worker_id = self.worker_id
        rec.client_cpu_percent = self.monitor.cpu_percent
        rec.client_loop_lag_ms = self.monitor.loop_lag_ms
        rec.finish_derived()
        path = self.path
        if path is not None:
            if self._writer is None:
                self._writer = RecordWriter(path)
                logger.info("writing per-request records to %s", path)
            self._writer.write(rec)
        if rec.outcome != OUTCOME_CUT:
            self._fire(rec)

    def _fire(self, rec: RequestRecord) -> None:
        fire = self.environment.events.request.fire
        ctx = {"expert": rec.expert, "worker_id": rec.worker_id}
        length = rec.output_tokens  # "response length" in tokens: the UI's average size column
        if not math.isnan(rec.ttft_s):
            fire(
                request_type=REQUEST_TYPE,
                name="TTFT",
                response_time=rec.ttft_s * 1000.0,
                response_length=length,
                exception=None,
                context=ctx,
            )
        e2e = rec.e2e_s if not math.isnan(rec.e2e_s) else 0.0
        fire(
            request_type=REQUEST_TYPE,
            name="E2E",
            response_time=e2e * 1000.0,
            response_length=length,
            exception=None if rec.success else RuntimeError(rec.error or f"HTTP {rec.status}"),
            context=ctx,
        )

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            logger.info("%d records written to %s", self._writer.count, self._writer.path)
            self._writer = None
