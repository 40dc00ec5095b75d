"""`expert-router bench soak`: a long streaming run through the gateway; errors, memory, fds, p99 drift.

While Locust drives the gateway + 2 sims, a sampler thread reads the gateway's RSS and open file
descriptors every few seconds (psutil, the process and its children). The report compares the first
sample after the ramp with the last one, and p99 TTFT/E2E per minute (by request start) for drift.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import psutil

from system.bench._out import local_out
from system.bench._sims import sim_stack
from system.bench.accuracy import locust_version, machine, pct, processes_for, write_json
from system.records import read_records
from system.runner.locust import run_locust

DEFAULT_OUT = local_out("soak.json")
SAMPLE_EVERY_S = 5.0


def proc_usage(pid: int) -> tuple[float, int]:
    """(RSS MiB, open fds) of `pid` plus its children."""
    p = psutil.Process(pid)
    rss, fds = 0, 0
    for q in [p, *p.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            rss += q.memory_info().rss
            fds += q.num_fds()
    return rss / 2**20, fds


class Sampler(threading.Thread):
    """Samples (ts, rss_mb, fds) of one process tree until stopped."""

    def __init__(self, pid: int, every_s: float = SAMPLE_EVERY_S) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, float, int]] = []
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            with contextlib.suppress(psutil.Error):
                rss, fds = proc_usage(self.pid)
                self.samples.append((time.time(), rss, fds))
            self._stop_evt.wait(self.every_s)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(timeout=10)

    def first_after(self, ts: float) -> tuple[float, float, int]:
        after = [s for s in self.samples if s[0] >= ts]
        return after[0] if after else self.samples[-1]


def per_minute_p99(df: Any, t0: float, column: str) -> list[float]:
    """p99 (ms) of `column` per whole minute of request starts after t0 (the cut-short last one dropped)."""
    d = df[df["success"] & (df["start_ts"] >= t0)]
    if d.empty:
        return []
    minute = ((d["start_ts"] - t0) // 60).astype(int)
    full = int((d["start_ts"].max() - t0) // 60)  # the last minute is cut short by the end of the run
    out = []
    for m in range(max(1, full)):
        vals = d.loc[minute == m, column] * 1000.0
        out.append(round(pct(vals, 99), 2))
    return out


@click.command("soak")
@click.option(
    "--minutes",
    type=click.FloatRange(min=0.05),
    default=10.0,
    show_default=True,
    help="Run length after the ramp-up.",
)
@click.option(
    "--users", type=click.IntRange(min=1), default=1000, show_default=True, help="Concurrent streaming users."
)
@click.option("--processes", type=click.IntRange(min=1), default=None, help="Locust processes [2 at >= 500]")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Output tokens per request.",
)
@click.option("--profile", default="debug", show_default=True, help="Sim profile.")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep records/logs in this dir.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="JSON result file.")
def soak(
    minutes: float,
    users: int,
    processes: int | None,
    max_tokens: int,
    profile: str,
    keep: str | None,
    out: str,
) -> None:
    """Soak: N streaming users through the gateway for M minutes; errors, RSS, fds, p99 drift."""
    procs = processes_for(users, processes)
    ramp_s = 10.0 if users > 100 else 2.0
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        with sim_stack(work / "stack", profile=profile) as stack:
            assert stack.gateway is not None
            sampler = Sampler(stack.gateway.pid)
            sampler.start()
            t0 = time.time()
            click.echo(f"soak: {users} users, {procs} Locust process(es), {minutes:g} min ...", err=True)
            try:
                res = run_locust(
                    stack.target,
                    users,
                    users / ramp_s,
                    minutes * 60 + ramp_s,
                    work / "records",
                    workload="synthetic",
                    processes=procs,
                    extra_args=["--max-tokens", str(max_tokens)],
                    log_path=work / "locust.log",
                )
            finally:
                sampler.stop()
            gateway_alive = stack.gateway.alive()
        if res.timed_out or not res.record_paths:
            raise click.ClickException(f"Locust soak run failed:\n{res.log_tail()}")
        df = read_records(res.record_paths)
    warm = t0 + ramp_s + min(10.0, minutes * 60 / 4)  # Locust start-up + ramp-up over: the warm baseline
    _, rss_start, fds_start = sampler.first_after(warm)
    _, rss_end, fds_end = sampler.samples[-1]
    failed = df[df["outcome"] == "error"]  # `cut`: still streaming when the run ended, not a failure
    ttft_pm = per_minute_p99(df, warm, "ttft_s")
    e2e_pm = per_minute_p99(df, warm, "e2e_s")
    result: dict[str, Any] = {
        "benchmark": "soak",
        "machine": machine(),
        "locust": locust_version(),
        "settings": {
            "minutes": minutes,
            "users": users,
            "processes": procs,
            "max_tokens": max_tokens,
            "profile": profile,
            "workload": "synthetic",
        },
        "requests": len(df),
        "errors": len(failed),
        "duplicate_request_ids": int(df["request_id"].duplicated().sum()),
        "error_kinds": failed["error"].str.slice(0, 120).value_counts().head(5).to_dict(),
        "locust_requests": res.locust_count("E2E")[0],
        "gateway_alive_at_end": gateway_alive,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_max_mb": round(max(s[1] for s in sampler.samples), 1),
        "fds_start": fds_start,
        "fds_end": fds_end,
        "ttft_p99_ms_per_minute": ttft_pm,
        "e2e_p99_ms_per_minute": e2e_pm,
        "ttft_p99_drift_ms": round(ttft_pm[-1] - ttft_pm[0], 2) if ttft_pm else None,
        "e2e_p99_drift_ms": round(e2e_pm[-1] - e2e_pm[0], 2) if e2e_pm else None,
        "client_cpu_max_percent": float(df["client_cpu_percent"].max()),
        "client_loop_lag_p99_ms": round(pct(df["client_loop_lag_ms"], 99), 2),
        "samples": [(round(ts - t0, 1), round(rss, 1), fds) for ts, rss, fds in sampler.samples],
    }
    write_json(out, result)
    click.echo(
        f"{result['requests']} requests, {result['errors']} errors; gateway RSS {rss_start:.1f} -> "
        f"{rss_end:.1f} MiB, fds {fds_start} -> {fds_end}; p99 TTFT per minute {ttft_pm} ms; "
        f"p99 E2E per minute {e2e_pm} ms"
    )
    click.echo(f"wrote {out}")
