"""Launch the Locust scenario (loadtests/locustfile.py) headless in a subprocess and collect its outputs.

The runner's load generator, also used by the benchmarks. Locust monkey-patches the process with gevent,
so it is never imported here: this module only builds the command line, runs it in its own process group
(so `--processes` forks die with it) and reads back the per-request record files, the open-loop arrival
reports and Locust's own JSON stats.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system.records import record_files

GRACE_S = 60.0  # start-up, spawning and shutdown on a busy 2-core machine


def locustfile_path() -> Path:
    """Path of loadtests/locustfile.py without importing the package (find_spec does not execute it)."""
    spec = importlib.util.find_spec("loadtests")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / "locustfile.py"
            if p.exists():
                return p
    p = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"
    if not p.exists():
        raise FileNotFoundError(
            "loadtests/locustfile.py not found: is the project installed (pip install -e .)?"
        )
    return p


@dataclass(frozen=True)
class OpenLoop:
    """Open-loop load: `rate` requests/s from one seeded schedule (loadtests/openloop.py)."""

    rate: float
    max_concurrency: int | None = None
    burstiness: float = 1.0

    def args(self) -> list[str]:
        out = ["--request-rate", f"{self.rate:g}", "--burstiness", f"{self.burstiness:g}"]
        if self.max_concurrency:
            out += ["--max-concurrency", str(int(self.max_concurrency))]
        return out


@dataclass
class LocustResult:
    """Outcome of one Locust run. Exit code 1 only means "some requests failed" (Locust's default)."""

    returncode: int
    records_dir: Path
    record_paths: list[Path]
    log_path: Path
    cmd: list[str]
    stats: list[dict[str, Any]] = field(default_factory=list)  # Locust's --json-file entries
    timed_out: bool = False
    arrivals: list[dict[str, Any]] = field(default_factory=list)  # open loop: one report per process

    @classmethod
    def collect(
        cls,
        rc: int,
        timed_out: bool,
        records: Path,
        log: Path,
        cmd: list[str],
        json_prefix: Path,
        **extra: Any,
    ) -> LocustResult:
        """A finished run's result (local or remote workers): its record files and Locust's stats."""
        return cls(
            returncode=rc,
            records_dir=records,
            record_paths=record_files(records),
            log_path=log,
            cmd=cmd,
            stats=read_stats(json_prefix),
            timed_out=timed_out,
            **extra,
        )

    def locust_count(self, name: str = "E2E") -> tuple[int, int]:
        """(requests, failures) Locust counted for the entry `name` (E2E: one per finished request)."""
        for entry in self.stats:
            if entry.get("name") == name:
                return int(entry.get("num_requests", 0)), int(entry.get("num_failures", 0))
        return 0, 0

    def log_tail(self, n: int = 40) -> str:
        from system.processes import tail

        return tail(self.log_path, n)


def build_command(
    host: str,
    users: int,
    spawn_rate: float,
    run_time_s: float | None,
    records_dir: Path,
    *,
    workload: str = "synthetic",
    shape: str | None = None,
    processes: int = 1,
    extra_args: Sequence[str] = (),
    json_prefix: Path | None = None,
    open_loop: OpenLoop | None = None,
) -> list[str]:
    """The locust command line; with `open_loop`, one schedule-running user per process (users ignored)."""
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--headless", "--only-summary"]
    cmd += ["--host", host, "--records-dir", str(records_dir), "--workload", workload]
    if open_loop is not None:
        n = max(1, int(processes))
        # every process's schedule user at once (a low -r makes the master dispatch them a second apart)
        cmd += ["-u", str(n), "-r", str(max(n, 100)), *open_loop.args()]
    else:
        cmd += ["-u", str(int(users)), "-r", f"{float(spawn_rate):g}"]
    if run_time_s is not None:
        cmd += ["-t", f"{max(1, math.ceil(run_time_s))}s"]
    if shape:
        cmd += ["--shape", shape]
    if processes > 1:
        cmd += ["--processes", str(int(processes))]
    if json_prefix is not None:
        cmd += ["--json-file", str(json_prefix)]
    cmd += [str(a) for a in extra_args]
    return cmd


def run_locust(
    host: str,
    users: int,
    spawn_rate: float,
    run_time_s: float | None,
    records_dir: str | Path,
    *,
    workload: str = "synthetic",
    shape: str | None = None,
    processes: int = 1,
    extra_args: Sequence[str] = (),
    log_path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float | None = None,
    open_loop: OpenLoop | None = None,
) -> LocustResult:
    """Run `locust -f loadtests/locustfile.py --headless ...` to completion; records go to `records_dir`.

    `open_loop` switches to open-loop arrivals (then `users`/`spawn_rate` are ignored).
    `extra_args` are appended verbatim (e.g. ["--max-tokens", "64", "--endpoint", "completions"]).
    The log (stdout+stderr) goes to `log_path` (default: records_dir/../locust.log). A run exceeding
    `timeout_s` (default: run time + 60 s) has its whole process group killed; `timed_out` is then set.
    A shape run without `run_time_s` ends when the shape does; then pass `timeout_s`.
    """
    records = Path(records_dir)
    records.mkdir(parents=True, exist_ok=True)
    log = Path(log_path) if log_path is not None else records.parent / "locust.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    json_prefix = log.with_name(log.stem + "-stats")
    cmd = build_command(
        host,
        users,
        spawn_rate,
        run_time_s,
        records,
        workload=workload,
        shape=shape,
        processes=processes,
        extra_args=extra_args,
        json_prefix=json_prefix,
        open_loop=open_loop,
    )
    if timeout_s is None:
        timeout_s = (run_time_s or 0.0) + GRACE_S if run_time_s is not None else None
    rc, timed_out, pid = run_process(cmd, log, env, timeout_s)
    # forked --processes workers share the group: make sure none outlives the run
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return LocustResult.collect(
        rc, timed_out, records, log, cmd, json_prefix, arrivals=read_arrivals(records)
    )


def run_process(
    cmd: list[str],
    log: Path,
    env: Mapping[str, str] | None,
    timeout_s: float | None,
    *,
    cwd: Path | None = None,
) -> tuple[int, bool, int]:
    """Run a Locust command in its own process group, stdout+stderr appended to `log`; the group is killed
    when it outlives `timeout_s` or the caller is interrupted. Returns (returncode, timed_out, pid)."""
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env, cwd=cwd,
            start_new_session=True,
        )  # fmt: skip
        try:
            return proc.wait(timeout=timeout_s), False, proc.pid
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return (proc.returncode if proc.returncode is not None else -9), True, proc.pid
        except BaseException:
            _kill_group(proc)
            raise


def read_stats(json_prefix: Path) -> list[dict[str, Any]]:
    """Locust's `--json-file` stats (`<prefix>.json`); [] when it is missing or unreadable."""
    stats_file = json_prefix.with_name(json_prefix.name + ".json")
    if stats_file.exists():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            return list(json.loads(stats_file.read_text()))
    return []


def read_arrivals(records_dir: Path) -> list[dict[str, Any]]:
    """The open-loop arrival reports (`arrivals-<worker>.json`) in a records directory."""
    out = []
    for p in sorted(Path(records_dir).glob("arrivals-*.json")):
        with contextlib.suppress(json.JSONDecodeError, OSError):
            out.append(json.loads(p.read_text()))
    return out


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
