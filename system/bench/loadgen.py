"""`expert-router bench loadgen`: the load one Locust worker (one process, one core) sustains at the accuracy
target, and from it how many workers a 1,000 / 10,000-user sweep needs.

One Locust process against one sim (no gateway, so the sim's own small CPU share is the only other load), at
several user counts, repeated. Per run: the worker's CPU seconds in the steady window,
SSE content events and requests it handled, and the harness TTFT error against the sim's ground truth
(system.bench.accuracy). The worker's CPU time is read (psutil) at two moments inside the steady window,
so Locust's start-up, ramp and shutdown are not charged to the events.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import psutil

from system.bench._out import local_out
from system.bench._sims import sim_stack
from system.bench.accuracy import locust_version, machine, parse_users, run_step, write_json
from system.records import read_records, record_files

DEFAULT_OUT = local_out("loadgen.json")
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean and 95 % t-interval half-width (NaN with < 2 values)."""
    a = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if a.size == 0:
        return {"mean": math.nan, "ci95": math.nan, "n": 0}
    half = T95.get(a.size - 1, 1.96) * float(a.std(ddof=1)) / math.sqrt(a.size) if a.size > 1 else math.nan
    return {"mean": float(a.mean()), "ci95": half, "n": int(a.size)}


class WorkerCpu:
    """Samples the Locust worker's CPU time (psutil) at two wall-clock moments inside the steady window, on a
    thread, while run_step blocks; start-up, ramp and shutdown stay outside the measurement."""

    def __init__(self, at_s: tuple[float, float]) -> None:
        self.at_s = at_s
        self.samples: list[tuple[float, float]] = []  # (epoch ts, cpu seconds)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def start(self) -> WorkerCpu:
        self._thread.start()
        return self

    def _locust(self) -> psutil.Process | None:
        for c in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if any("locust" in part for part in c.cmdline()):
                    return c
        return None

    def _run(self) -> None:
        for at in self.at_s:
            time.sleep(max(0.0, self._t0 + at - time.monotonic()))
            proc = self._locust()
            if proc is None:
                return
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                self.samples.append((time.time(), t.user + t.system))

    def join(self) -> None:
        self._thread.join(timeout=5)


def events_between(df: Any, t0: float, t1: float) -> int:
    """Content events (first chunk + one per inter-token gap) whose arrival time falls in [t0, t1]."""
    n = 0
    for start, ttft, itl in zip(df["start_ts"], df["ttft_s"], df["itl_s"], strict=True):
        if math.isnan(ttft):
            continue
        times = start + ttft + np.concatenate(([0.0], np.cumsum(itl)))
        n += int(((times >= t0) & (times <= t1)).sum())
    return n


def one_run(target: str, users: int, seconds: float, max_tokens: int, work: Path) -> dict[str, Any]:
    ramp_s = 5.0 if users > 50 else 1.0  # as accuracy.run_step
    # Locust start-up (~2 s here) + ramp + 1 s settle, to 1 s before the configured end
    cpu = WorkerCpu((3.0 + ramp_s, 2.0 + ramp_s + seconds - 1.0)).start()
    stats = run_step(target, users, seconds, 1, max_tokens, work)
    cpu.join()
    df = read_records(record_files(work / f"users={users}" / "records"))
    ok = df[df["success"]]
    out: dict[str, Any] = {**stats, "cpu_window_s": math.nan, "worker_cpu_s": math.nan, "events": 0}
    if len(cpu.samples) == 2:
        (t0, c0), (t1, c1) = cpu.samples
        events = events_between(ok, t0, t1)
        ended = ok[(ok["end_ts"] >= t0) & (ok["end_ts"] <= t1)]
        out.update(
            cpu_window_s=t1 - t0,
            worker_cpu_s=c1 - c0,
            events=events,
            events_per_s=events / (t1 - t0),
            requests_per_s=len(ended) / (t1 - t0),
            worker_core_busy=(c1 - c0) / (t1 - t0),
            cpu_us_per_event=(c1 - c0) / events * 1e6 if events else math.nan,
        )
    return out


def status(err: dict[str, float], target_ms: float) -> str:
    """met: the CI upper end is under the target; missed: its lower end is over; else inconclusive."""
    half = err["ci95"] if not math.isnan(err["ci95"]) else math.inf
    if err["mean"] + half <= target_ms:
        return "met"
    return "missed" if err["mean"] - half > target_ms else "inconclusive"


def at_target(per_users: list[dict[str, Any]], target_ms: float) -> dict[str, Any]:
    """The highest load whose TTFT error p99 meets `target_ms`, and the first level above it."""
    key = f"{target_ms:g}"
    met = [p for p in per_users if p["target"][key] == "met"]
    best = max(met, key=lambda p: p["events_per_s"]["mean"]) if met else None
    above = [p for p in per_users if best is None or p["users"] > best["users"]]
    return {
        "ttft_error_p99_target_ms": target_ms,
        "sustained": None
        if best is None
        else {
            "users": best["users"],
            "events_per_s": best["events_per_s"]["mean"],
            "events_per_s_ci95": best["events_per_s"]["ci95"],
            "requests_per_s": best["requests_per_s"]["mean"],
            "worker_core_busy": best["worker_core_busy"]["mean"],
            "events_per_s_per_user": best["events_per_s_per_user"],
        },
        "first_level_not_met": above[0]["users"] if above else None,
        "first_level_not_met_status": above[0]["target"][key] if above else None,
    }


def summarize(runs: list[dict[str, Any]], targets_ms: list[float]) -> dict[str, Any]:
    per_users = []
    for users in sorted({r["users"] for r in runs}):
        rs = [r for r in runs if r["users"] == users]
        err = mean_ci([r["ttft_error_p99_ms"] for r in rs])
        eps = mean_ci([r.get("events_per_s", math.nan) for r in rs])
        per_users.append(
            {
                "users": users,
                "reps": len(rs),
                "ttft_error_p99_ms": err,
                "ttft_error_p50_ms": mean_ci([r["ttft_error_p50_ms"] for r in rs]),
                "client_loop_lag_p99_ms": mean_ci([r["client_loop_lag_p99_ms"] for r in rs]),
                "events_per_s": eps,
                "requests_per_s": mean_ci([r.get("requests_per_s", math.nan) for r in rs]),
                "events_per_s_per_user": eps["mean"] / users,
                "worker_core_busy": mean_ci([r.get("worker_core_busy", math.nan) for r in rs]),
                "cpu_us_per_event": mean_ci([r.get("cpu_us_per_event", math.nan) for r in rs]),
                "errors": sum(r["errors"] for r in rs),
                "target": {f"{t:g}": status(err, t) for t in targets_ms},
            }
        )
    us = mean_ci([r.get("cpu_us_per_event", math.nan) for r in runs])
    # the cost per event falls with load (the worker's per-second work spreads over more events): plan a
    # busy worker with the cost measured at the highest event rate reached
    busiest = max(per_users, key=lambda p: p["events_per_s"]["mean"])
    top = busiest["cpu_us_per_event"]
    return {
        "cpu_us_per_event": us,
        "cpu_us_per_event_busiest": {**top, "users": busiest["users"]},
        "events_per_core_s_at_full_cpu": 1e6 / top["mean"] if top["mean"] > 0 else math.nan,
        "per_users": per_users,
        "at_target": [at_target(per_users, t) for t in targets_ms],
    }


def workers_needed(capacity_events_s: float, scenarios: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Workers for each (users, events/s per user) scenario at `capacity_events_s` per worker."""
    out = []
    for s in scenarios:
        need = s["users"] * s["events_per_s_per_user"]
        out.append({**s, "events_per_s": need, "workers": math.ceil(need / capacity_events_s)})
    return out


@click.command("loadgen")
@click.option("--users", "users_text", default="50,100,200,400", show_default=True, help="User counts.")
@click.option("--reps", type=click.IntRange(min=2), default=3, show_default=True, help="Repetitions.")
@click.option("--seconds", type=click.FloatRange(min=2), default=10.0, show_default=True)
@click.option("--max-tokens", type=click.IntRange(min=2), default=64, show_default=True)
@click.option(
    "--target-ms",
    type=float,
    multiple=True,
    default=(10.0, 20.0),
    show_default=True,
    help="TTFT error p99 targets.",
)
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="JSON result file.")
def loadgen(
    users_text: str, reps: int, seconds: float, max_tokens: int, target_ms: tuple[float, ...], out: str
) -> None:
    """Load one Locust worker sustains at the accuracy target; workers for 1,000 / 10,000 users."""
    users = parse_users(users_text)
    runs: list[dict[str, Any]] = []
    load_start = list(os.getloadavg())  # how busy the host was: timings on a shared machine need it
    with (
        tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp,
        sim_stack(Path(tmp) / "stack", n_sims=1, gateway=False) as stack,
    ):
        for rep in range(reps):
            for n in users:  # interleaved, so slow drift of the machine's load hits every level alike
                r = one_run(stack.target, n, seconds, max_tokens, Path(tmp) / f"rep={rep}")
                r["rep"] = rep
                runs.append(r)
                click.echo(
                    f"rep {rep} users {n}: {r['requests']} requests, "
                    f"{r.get('events_per_s', math.nan):.0f} events/s, worker core "
                    f"{100 * r.get('worker_core_busy', math.nan):.0f}% busy, "
                    f"TTFT err p99 {r['ttft_error_p99_ms']:+.1f} ms",
                    err=True,
                )
                time.sleep(2.0)
    summary = summarize(runs, list(target_ms))
    # per-user event rates: the sim's (as measured here) and a streaming LLM at TPOT 20 / 50 ms with one
    # token per SSE event (vLLM's default); closed-loop users spend part of each request before the first
    # token, so these are upper bounds on the event rate and the worker counts are conservative
    plans = []
    for t in summary["at_target"]:
        sus = t["sustained"]
        if sus is None:
            continue
        rates = {"as measured (sim debug profile)": sus["events_per_s_per_user"], "TPOT 20 ms": 50.0}
        rates["TPOT 50 ms"] = 20.0
        scenarios = [
            {"users": u, "events_per_s_per_user": r, "assumption": name}
            for u in (1000, 10000)
            for name, r in rates.items()
        ]
        plans.append(
            {
                "ttft_error_p99_target_ms": t["ttft_error_p99_target_ms"],
                "events_per_s_per_worker": sus["events_per_s"],
                "rows": workers_needed(sus["events_per_s"], scenarios),
            }
        )
    result = {
        "benchmark": "loadgen",
        "machine": machine(),
        "locust": locust_version(),
        "settings": {
            "users": users,
            "reps": reps,
            "seconds": seconds,
            "max_tokens": max_tokens,
            "target": "one sim (debug profile, stream interval 1), no gateway, one Locust process",
            "ttft_error_p99_targets_ms": list(target_ms),
        },
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        **summary,
        "workers_needed": plans,
        "runs": runs,
    }
    write_json(out, result)
    click.echo(f"wrote {out}")
