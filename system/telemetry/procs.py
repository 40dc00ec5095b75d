"""CPU and RSS of named processes (gateway, engines, load generator), each summed over its process tree."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import psutil

from system.telemetry.base import CsvSampler

PROCS_HEADER = ("ts", "name", "pid", "cpu_percent", "rss_mb")


class ProcessSampler(CsvSampler):
    """One row per named process per tick: CPU % (100 = one core) and RSS, including its children.

    Children count because vLLM runs its tensor-parallel workers, and Locust `--processes` its workers, as
    child processes. `pids` may be a callable so a restarted stack is picked up. psutil's cpu_percent needs
    two readings, so each process object is kept between ticks (the first reading of a process is skipped).
    """

    HEADER = PROCS_HEADER
    DELAY_FIRST = True  # cpu_percent over a ~0 s window is noise

    def __init__(
        self,
        path: str | Path,
        pids: Mapping[str, int] | Callable[[], Mapping[str, int]],
        interval_s: float = 1.0,
    ) -> None:
        super().__init__(path, interval_s)
        self._pids = pids
        self._procs: dict[int, psutil.Process] = {}

    def _current(self) -> Mapping[str, int]:
        return self._pids() if callable(self._pids) else self._pids

    def _proc(self, pid: int) -> tuple[psutil.Process, bool]:
        p = self._procs.get(pid)
        if p is not None:
            return p, False
        p = psutil.Process(pid)
        p.cpu_percent(None)  # prime: the next call returns usage since now
        self._procs[pid] = p
        return p, True

    def setup(self) -> None:
        for pid in self._current().values():
            self._prime_tree(pid)

    def _prime_tree(self, pid: int) -> None:
        try:
            root, _ = self._proc(pid)
            for c in root.children(recursive=True):
                self._proc(c.pid)
        except psutil.Error:
            pass

    def sample(self) -> list[list[Any]]:
        ts = round(time.time(), 3)
        rows: list[list[Any]] = []
        seen: set[int] = set()
        for name, pid in self._current().items():
            try:
                root, _ = self._proc(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue  # gone: no row (the runner notices dead servers itself)
            cpu = 0.0
            rss = 0
            for p in tree:
                try:
                    proc, fresh = self._proc(p.pid)
                    seen.add(p.pid)
                    c = proc.cpu_percent(None)
                    rss += proc.memory_info().rss
                    if not fresh:
                        cpu += c
                except psutil.Error:
                    continue
            rows.append([ts, name, pid, round(cpu, 1), round(rss / (1024 * 1024), 1)])
        for pid in list(self._procs):  # forget processes that went away
            if pid not in seen:
                del self._procs[pid]
        return rows
