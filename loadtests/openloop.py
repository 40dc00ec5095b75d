"""Open-loop load: one user per process sends its share of one seeded arrival schedule (Poisson / gamma).

Requests leave at the schedule's due times, whether or not earlier ones have finished; only
`--max-concurrency` (split over the processes) holds an arrival back, as in `vllm bench serve`, and then the
arrival is sent late. What happened to the schedule is written to `<records-dir>/arrivals-<worker>.json`:
arrivals due, sent, late (waiting for a concurrency slot, or a starved client: the loop woke late),
dropped (due but never sent before the step ended), cut (in flight when it ended).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
import gevent.pool
from geventhttpclient import HTTPClient
from locust import task

from loadtests.users import StreamUserBase
from system.arrivals import arrival_offsets, schedule_seed, split_concurrency

logger = logging.getLogger("loadtests.openloop")

ARRIVALS_FILE_PREFIX = "arrivals-"
STOP_TIMEOUT_S = 10.0  # killing in-flight requests (each writes its cut record) must not hang the stop


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return math.nan
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class OpenLoopUser(StreamUserBase):
    """The schedule runner of this process (Locust starts one per process: `-u <processes>`)."""

    _claimed = False  # one schedule per process, however many users Locust spawns here

    def wait_time(self) -> float:
        return 0.0

    def on_start(self) -> None:
        super().on_start()
        s = self.settings
        self.active = not OpenLoopUser._claimed
        OpenLoopUser._claimed = True
        if not self.active:
            logger.warning("open loop: one user per process runs the schedule; extra users stay idle")
            return
        self.worker_index = int(getattr(self.environment.runner, "worker_index", 0) or 0)
        self.workers = max(s.arrival_workers, self.worker_index + 1)
        if self.workers != s.arrival_workers:
            logger.warning("worker index %d >= --arrival-workers %d", self.worker_index, s.arrival_workers)
        self.limit = split_concurrency(s.max_concurrency or None, self.workers, self.worker_index)
        self.slots = gevent.lock.BoundedSemaphore(self.limit) if self.limit else None
        self.requests = gevent.pool.Group()
        self.idle: list[HTTPClient] = []
        self.due = self.sent = self.late_concurrency = self.late_client = 0
        self.in_flight = self.max_in_flight = 0
        self.blocked = False  # the schedule loop waits for a concurrency slot
        self.lateness: list[float] = []
        self.schedule = arrival_offsets(
            s.request_rate,
            s.burstiness,
            schedule_seed(s.seed, s.request_rate),
            workers=self.workers,
            worker_index=self.worker_index,
        )
        self.t0 = time.perf_counter()
        self.started_ts = time.time()

    @task
    def run_schedule(self) -> None:
        if not self.active:
            gevent.sleep(3600)
            return
        late_s = self.settings.late_ms / 1000.0
        for due in self.schedule:
            wait = due - (time.perf_counter() - self.t0)
            if wait > 0:
                gevent.sleep(wait)
            self.due += 1
            waited = False
            if self.slots is not None and not self.slots.acquire(blocking=False):
                waited = self.blocked = True
                self.slots.acquire()  # held back by the cap: the arrival leaves late (vllm bench serve)
                self.blocked = False
            self.requests.spawn(self._one, due, waited, late_s)

    def _one(self, due: float, waited: bool, late_s: float) -> None:
        # counted here, when the request really starts: one killed before it ran was never sent (dropped)
        self.sent += 1
        lateness = time.perf_counter() - self.t0 - due
        self.lateness.append(lateness)
        if lateness > late_s:
            if waited:
                self.late_concurrency += 1
            else:
                self.late_client += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        http: HTTPClient | None = None
        try:
            http = self.idle.pop() if self.idle else self.new_connection()
            reusable = self.send_one(http)
        except BaseException:
            if http is not None:
                http.close()  # cut mid-request: the socket is in an unknown state
            raise
        finally:
            self.in_flight -= 1
            if self.slots is not None:
                self.slots.release()
        if reusable:
            self.idle.append(http)
        else:
            http.close()

    def on_stop(self) -> None:
        if not getattr(self, "active", False):
            return
        elapsed = time.perf_counter() - self.t0
        stopped_ts = time.time()
        # arrivals due by now that the schedule loop had not reached because the cap held it back (a loop
        # that was sleeping towards its next arrival has nothing else due)
        if self.blocked:
            for due in self.schedule:
                if due > elapsed:
                    break
                self.due += 1
        in_flight = self.in_flight
        self.requests.kill(block=True, timeout=STOP_TIMEOUT_S)  # each writes its `cut` record
        dropped = self.due - self.sent  # due, never sent: held back by the cap, or spawned but not started
        for http in self.idle:
            http.close()
        self.idle = []
        self.write_stats(elapsed, stopped_ts, in_flight, dropped)

    def write_stats(self, elapsed: float, stopped_ts: float, in_flight: int, dropped: int) -> None:
        s = self.settings
        ms = [x * 1000.0 for x in self.lateness]
        doc: dict[str, Any] = {
            "worker_id": self.recorder.worker_id,
            "worker_index": self.worker_index,
            "workers": self.workers,
            "target_rate_rps": s.request_rate,
            "burstiness": s.burstiness,
            "max_concurrency": s.max_concurrency or None,
            "worker_max_concurrency": self.limit,
            "seed": s.seed,
            "started_ts": self.started_ts,
            "stopped_ts": stopped_ts,
            "elapsed_s": elapsed,
            "due": self.due,
            "sent": self.sent,
            "dropped": dropped,
            "cut": in_flight,
            "late_ms_threshold": s.late_ms,
            "late_concurrency": self.late_concurrency,
            "late_client": self.late_client,
            "lateness_p50_ms": _pct(ms, 0.5),
            "lateness_p99_ms": _pct(ms, 0.99),
            "lateness_max_ms": max(ms) if ms else math.nan,
            "max_in_flight": self.max_in_flight,
            "achieved_rate_rps": self.sent / elapsed if elapsed > 0 else math.nan,
        }
        logger.info(
            "open loop: %d sent of %d due in %.1f s (%.2f/s of this worker's share), %d late (cap %d, "
            "client %d), %d dropped, %d cut",
            self.sent,
            doc["due"],
            elapsed,
            doc["achieved_rate_rps"],
            self.late_concurrency + self.late_client,
            self.late_concurrency,
            self.late_client,
            dropped,
            in_flight,
        )
        if not s.records_dir:
            return
        path = Path(s.records_dir) / f"{ARRIVALS_FILE_PREFIX}{self.recorder.worker_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, allow_nan=True))
        os.replace(tmp, path)
