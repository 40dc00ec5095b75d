"""`expert-router bench accuracy`: Locust-measured TTFT/E2E minus the sim's ground truth, per user count.

The sim stamps each response with when the request arrived and when its first and last token were due
(`sim_timing`, same clock as the client). Per successful request, keys `<name>_p50_ms_<N>` / `_p99_ms_<N>`:

- `send_to_arrival`: `gt_arrival_ts − start_ts`, the system path (Locust send → sim arrival; through the
  gateway with `--target gateway`, so it includes the gateway's receive, classify and forward);
- `ttft_error` (today's key, unchanged) = `client_ttft_error` (the client's share): first content byte read by
  Locust − `first_token_ts`. With `--target gateway` it includes the gateway's relay of that byte (and the
  sim's own emission lateness); with `--target direct` it is the sim's emission lateness plus Locust's read
  only. `client_ttft_error_scope` says which;
- `harness_ttft_error`: the two together = measured TTFT − the sim's own TTFT (`first_token_ts −
  arrival_ts`), the error a TTFT in a report carries;
- `e2e_error`: last content chunk read − `last_token_ts`.
"""

from __future__ import annotations

import json
import math
import platform
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from system.bench._out import local_out
from system.bench._sims import sim_stack
from system.records import read_records
from system.runner.locust import run_locust

DEFAULT_OUT = local_out("accuracy.json")


def parse_users(text: str) -> list[int]:
    try:
        users = [int(u) for u in text.split(",") if u.strip()]
    except ValueError as e:
        raise click.BadParameter(f"--users must be comma-separated integers, got {text!r}") from e
    if not users or min(users) < 1:
        raise click.BadParameter(f"--users needs user counts >= 1, got {text!r}")
    return users


def pct(values: Any, q: float) -> float:
    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    return float(np.percentile(a, q)) if a.size else math.nan


def machine() -> dict[str, Any]:
    import psutil

    from system.runner.manifest import cpu_model

    return {
        "host": socket.gethostname(),
        "cpu": cpu_model(),
        "cpus": psutil.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def locust_version() -> str:
    from importlib.metadata import version

    return version("locust")


def processes_for(users: int, processes: int | None) -> int:
    """One Locust process saturates near 1,000 streams on this machine: 2 from 500 users up."""
    if processes is not None:
        return processes
    return 2 if users >= 500 else 1


def error_stats(df: Any, start_after_ts: float) -> dict[str, float]:
    """TTFT/E2E error percentiles (ms) of successful requests sent after `start_after_ts` (ramp-up over)."""
    d = df[df["success"] & (df["start_ts"] >= start_after_ts) & df["gt_first_token_ts"].notna()]
    first_byte = d["start_ts"] + d["ttft_s"]
    last_chunk = first_byte + d["itl_s"].map(sum)
    ttft_err = (first_byte - d["gt_first_token_ts"]) * 1000.0
    e2e_err = (last_chunk - d["gt_last_token_ts"]) * 1000.0
    path = (d["gt_arrival_ts"] - d["start_ts"]) * 1000.0
    return {
        "measured": len(d),
        "ttft_error_p50_ms": pct(ttft_err, 50),
        "ttft_error_p99_ms": pct(ttft_err, 99),
        "client_ttft_error_p50_ms": pct(ttft_err, 50),
        "client_ttft_error_p99_ms": pct(ttft_err, 99),
        "harness_ttft_error_p50_ms": pct(path + ttft_err, 50),
        "harness_ttft_error_p99_ms": pct(path + ttft_err, 99),
        "e2e_error_p50_ms": pct(e2e_err, 50),
        "e2e_error_p99_ms": pct(e2e_err, 99),
        "send_to_arrival_p50_ms": pct(path, 50),
        "send_to_arrival_p99_ms": pct(path, 99),
        "ttft_p50_ms": pct(d["ttft_s"] * 1000.0, 50),
        "client_cpu_mean_percent": pct(d["client_cpu_percent"], 50),
        "client_cpu_max_percent": float(d["client_cpu_percent"].max()) if len(d) else math.nan,
        "client_loop_lag_p99_ms": pct(d["client_loop_lag_ms"], 99),
    }


def run_step(target: str, users: int, seconds: float, processes: int, max_tokens: int, work: Path) -> dict:
    ramp_s = 5.0 if users > 50 else 1.0
    spawn_rate = max(1.0, users / ramp_s)
    step_dir = work / f"users={users}"
    t0 = time.time()
    res = run_locust(
        target,
        users,
        spawn_rate,
        seconds + ramp_s,
        step_dir / "records",
        workload="synthetic",
        processes=processes,
        extra_args=["--max-tokens", str(max_tokens)],
        log_path=step_dir / "locust.log",
    )
    if res.timed_out or not res.record_paths:
        raise click.ClickException(f"Locust run at {users} users failed:\n{res.log_tail()}")
    df = read_records(res.record_paths)
    stats = error_stats(df, t0 + ramp_s + 2.0)  # +2 s: Locust start-up before the ramp begins
    stats.update(
        users=users,
        processes=processes,
        requests=int((df["outcome"] != "cut").sum()),  # `cut`: still streaming when the run ended
        errors=int((df["outcome"] == "error").sum()),
        duplicate_request_ids=int(df["request_id"].duplicated().sum()),
        # Locust's own count; its master waits only 0.5 s for the workers' last stats report, so under
        # heavy load it can miss the final seconds - the records are the complete set
        locust_requests=res.locust_count("E2E")[0],
    )
    return stats


def flatten(steps: list[dict]) -> dict[str, Any]:
    """Per-N keys as the bench contract wants them: ttft_error_p50_ms_<N>, ..."""
    out: dict[str, Any] = {}
    for s in steps:
        n = s["users"]
        for k, v in s.items():
            if k != "users":
                out[f"{k}_{n}"] = round(v, 3) if isinstance(v, float) else v
    return out


def client_scope(target: str) -> str:
    """What `client_ttft_error_*` covers for this target (written into the JSON beside the keys)."""
    if target == "direct":
        return "direct: sim first token due -> first byte read by Locust (sim emission lateness + client)"
    return (
        "via gateway: sim first token due -> first byte read by Locust, including the gateway's relay of "
        "that byte (run --target direct to isolate the client)"
    )


def markdown_table(steps: list[dict]) -> str:
    lines = [
        "| users | procs | requests | errors | send → sim arrival p50 / p99 (ms) "
        "| client share (TTFT err) p50 / p99 (ms) | harness TTFT err p50 / p99 (ms) | E2E err p50 / p99 (ms) "
        "| client CPU max | loop lag p99 (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pair(s: dict, key: str) -> str:
        a, b = s.get(f"{key}_p50_ms"), s.get(f"{key}_p99_ms")
        if a is None or b is None or (isinstance(a, float) and math.isnan(a)):
            return "–"
        return f"{a:+.1f} / {b:+.1f}"

    for s in steps:
        cpu = s.get("client_cpu_max_percent")
        lag = s.get("client_loop_lag_p99_ms")
        lines.append(
            f"| {s['users']} | {s['processes']} | {s['requests']:,} | {s['errors']} "
            f"| {pair(s, 'send_to_arrival')} | {pair(s, 'ttft_error')} | {pair(s, 'harness_ttft_error')} "
            f"| {pair(s, 'e2e_error')} "
            f"| {'–' if cpu is None else f'{cpu:.0f}%'} | {'–' if lag is None else f'{lag:.1f}'} |"
        )
    return "\n".join(lines)


@click.command("accuracy")
@click.option("--users", "users_text", default="1,100,500,1000", show_default=True, help="User counts.")
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Measured seconds per user count.",
)
@click.option(
    "--processes", type=click.IntRange(min=1), default=None, help="Locust processes [1; 2 at >= 500]"
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Output tokens per request.",
)
@click.option(
    "--target",
    type=click.Choice(["gateway", "direct"]),
    default="gateway",
    show_default=True,
    help="gateway: gateway + 2 sims; direct: one sim (no relay in the error).",
)
@click.option("--profile", default="debug", show_default=True, help="Sim profile.")
@click.option(
    "--stream-interval",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Sim tokens per SSE event (vLLM's option).",
)
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Keep records/logs in this dir.")
@click.option(
    "--out",
    default=DEFAULT_OUT,
    show_default=True,
    help="JSON result file (default: git-ignored; name results/benchmarks/accuracy.json to update the docs).",
)
def accuracy(
    users_text: str,
    seconds: float,
    processes: int | None,
    max_tokens: int,
    target: str,
    profile: str,
    stream_interval: int,
    keep: str | None,
    out: str,
) -> None:
    """Harness accuracy: measured TTFT/E2E minus the sim's ground truth at each user count."""
    users = parse_users(users_text)
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        gateway = target == "gateway"
        sim_args = ["--stream-interval", str(stream_interval)]
        n_sims = 2 if gateway else 1
        with sim_stack(
            work / "stack", n_sims=n_sims, gateway=gateway, profile=profile, sim_args=sim_args
        ) as stack:
            for n in users:
                procs = processes_for(n, processes)
                click.echo(f"accuracy: {n} users, {procs} Locust process(es), {seconds:g} s ...", err=True)
                s = run_step(stack.target, n, seconds, procs, max_tokens, work)
                steps.append(s)
                click.echo(
                    f"  {s['requests']} requests, {s['errors']} errors; TTFT error p50 "
                    f"{s['ttft_error_p50_ms']:+.2f} ms, p99 {s['ttft_error_p99_ms']:+.2f} ms; "
                    f"client CPU max {s['client_cpu_max_percent']:.0f}%",
                    err=True,
                )
                time.sleep(2.0)  # let the sims drain the cut-off streams before the next step
    result = {
        "benchmark": "accuracy",
        "machine": machine(),
        "locust": locust_version(),
        "settings": {
            "users": users,
            "seconds": seconds,
            "max_tokens": max_tokens,
            "target": target,
            "profile": profile,
            "stream_interval": stream_interval,
            "workload": "synthetic",
            "processes": processes,
        },
        "client_ttft_error_scope": client_scope(target),
        **flatten(steps),
        "steps": steps,
    }
    write_json(out, result)
    click.echo(markdown_table(steps))
    click.echo(f"wrote {out}")


def clean(obj: Any) -> Any:
    """NaN -> None (strict JSON), recursively."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [clean(v) for v in obj]
    return obj


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(clean(result), indent=2, allow_nan=False) + "\n")
