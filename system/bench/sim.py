"""`expert-router bench sim`: streamed tokens/s and concurrent streams one sim process sustains on one core.

One sim process pinned to one CPU; an aiohttp load client in a separate process (pinned to another CPU when
there is one) runs N closed-loop streaming users. Per level we report delivered tokens/s against what the
profile's cost model asks for, the sim's CPU, and the delivery lag vs the sim's own ground truth.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from system.bench._out import local_out
from system.engines.sim.benchclient import histogram_quantile, scrape
from system.runner.manifest import cpu_model

DEFAULT_OUT = Path(local_out("sim.json"))
DEFAULT_MD = Path(local_out("sim.md"))


def _git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _pin(pid: int, cpu: int | None) -> bool:
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(pid, {cpu})
        return True
    except OSError:
        return False


def run_level(
    profile: str,
    concurrency: int,
    stream_interval: int,
    duration_s: float,
    warmup_s: float,
    max_tokens: int,
    sim_cpu: int | None,
    client_cpu: int | None,
    workdir: Path,
) -> dict[str, Any]:
    import psutil

    from system.engines.sim.launch import sim_process

    log = workdir / f"sim-c{concurrency}-i{stream_interval}.log"
    proc, base = sim_process(profile, log, "--stream-interval", str(stream_interval), "--max-lag", "0.02")
    with proc:
        pinned = _pin(proc.pid, sim_cpu)
        spec = {
            "base": base,
            "model": profile,
            "concurrency": concurrency,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "max_tokens": max_tokens,
            "ramp_s": warmup_s / 2,
        }
        client = subprocess.Popen(
            [sys.executable, "-m", "system.engines.sim.benchclient", json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _pin(client.pid, client_cpu)
        sim_ps, cli_ps = psutil.Process(proc.pid), psutil.Process(client.pid)
        time.sleep(warmup_s)
        m0, s0, c0, t0 = scrape(base), sim_ps.cpu_times(), cli_ps.cpu_times(), time.monotonic()
        time.sleep(duration_s)
        m1, s1, c1, t1 = scrape(base), sim_ps.cpu_times(), cli_ps.cpu_times(), time.monotonic()
        out, err = client.communicate(timeout=duration_s + warmup_s + 120)
        if client.returncode != 0:
            raise click.ClickException(f"bench client failed ({client.returncode}):\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    wall = t1 - t0
    sim_cpu_pct = 100.0 * ((s1.user + s1.system) - (s0.user + s0.system)) / wall
    cli_cpu_pct = 100.0 * ((c1.user + c1.system) - (c0.user + c0.system)) / wall
    delta = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
    steps = delta.get("sim:steps_total", 0.0)
    # Simulated GPU time / wall time: 1.0 when the step loop keeps up (the sim is busy all along at these
    # loads); every late wake-up stretches wall time without adding simulated time.
    fidelity = delta.get("sim:busy_seconds_total", 0.0) / wall
    due = delta.get("vllm:generation_tokens_total", 0.0) / wall
    return {
        "profile": profile,
        "stream_interval": stream_interval,
        "concurrency": concurrency,
        "window_s": round(wall, 3),
        "sim_pinned_cpu": sim_cpu if pinned else None,
        "requests_measured": res["completed"],
        "errors": res["errors"],
        "mean_open_streams": res["mean_open_streams"],
        "tokens_per_s": res["tokens_per_s"],
        "events_per_s": res["events_per_s"],
        "sim_time_fidelity": round(fidelity, 4),
        "sim_due_tokens_per_s": round(due, 1),
        "delivered_vs_due": round(res["tokens_per_s"] / due, 3) if due else None,
        "sim_cpu_pct": round(sim_cpu_pct, 1),
        "client_cpu_pct": round(cli_cpu_pct, 1),
        "first_token_lag_ms": res["first_token_lag_ms"],
        "last_token_lag_ms": res["last_token_lag_ms"],
        "sim_steps_per_s": round(steps / wall, 1),
        "sim_step_lag_p50_ms": round(1e3 * histogram_quantile(delta, "sim:step_lag_seconds", 0.5), 2),
        "sim_step_lag_p99_ms": round(1e3 * histogram_quantile(delta, "sim:step_lag_seconds", 0.99), 2),
        "sim_reanchors": int(delta.get("sim:step_reanchors_total", 0.0)),
    }


def sustained(level: dict[str, Any]) -> bool:
    """The sim keeps up: no errors, simulated time >= 98 % of wall time, p99 first-token lag < 50 ms."""
    return (
        level["errors"] == 0
        and level["sim_time_fidelity"] >= 0.98
        and level["first_token_lag_ms"]["p99"] < 50.0
    )


def markdown(result: dict[str, Any]) -> str:
    host, cfg = result["host"], result["config"]
    lines = [
        f"### Simulator: one process, one core (`expert-router bench sim`, {result['host']['cpu']})",
        "",
        f"Profile `{result['config']['profile']}`, closed-loop streaming users, "
        f"M = {result['config']['max_tokens']} output tokens, {result['config']['duration_s']:.0f} s window "
        f"after {result['config']['warmup_s']:.0f} s warm-up. Lag = client receive time minus the sim's "
        "`sim_timing` due time. Sim time = simulated GPU busy time / wall time (1.0: the step loop keeps "
        "real time; late wake-ups stretch wall time). Sustained = no errors, sim time >= 98 %, p99 "
        "first-token lag < 50 ms. Output lengths uniform in [M/2, 3M/2]. "
        f"Host: {host['cpus']} CPUs, sim pinned to CPU {cfg['sim_cpu']}, client to CPU {cfg['client_cpu']}; "
        f"1-min load average {host['loadavg_1m_before']} before, {host['loadavg_1m_after']} after (other "
        "jobs on the host steal time from the pinned cores; the client's own event processing is part of "
        "the measured lag).",
        "",
        "| stream interval | streams | tokens/s delivered | sim time | SSE events/s "
        "| sim CPU (1 core) | client CPU | first-token lag p50 / p99 ms | last-token lag p99 ms "
        "| step lag p99 ms | re-anchors "
        "| errors | sustained |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for lv in result["levels"]:
        ft, lt = lv["first_token_lag_ms"], lv["last_token_lag_ms"]
        lines.append(
            f"| {lv['stream_interval']} | {lv['concurrency']} | {lv['tokens_per_s']:,.0f} "
            f"| {100 * lv['sim_time_fidelity']:.1f} % | {lv['events_per_s']:,.0f} "
            f"| {lv['sim_cpu_pct']:.0f} % | {lv['client_cpu_pct']:.0f} % | {ft['p50']:.1f} / {ft['p99']:.1f} "
            f"| {lt['p99']:.1f} | {lv['sim_step_lag_p99_ms']:.1f} | {lv['sim_reanchors']} | {lv['errors']} "
            f"| {'yes' if lv['sustained'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--profile", default="debug", show_default=True, help="Sim profile to serve.")
@click.option(
    "--concurrency", "-c", multiple=True, type=int, default=(100, 500, 1000), show_default=True,
    help="Concurrent streaming users per level (repeat).",
)  # fmt: skip
@click.option(
    "--stream-interval", "-i", multiple=True, type=int, default=(1, 8), show_default=True,
    help="Sim --stream-interval values (repeat).",
)  # fmt: skip
@click.option(
    "--duration", type=float, default=10.0, show_default=True, help="Measured window per level (s)."
)
@click.option("--warmup", type=float, default=4.0, show_default=True, help="Warm-up per level (s).")
@click.option("--max-tokens", type=int, default=100, show_default=True, help="Output tokens per request.")
@click.option("--sim-cpu", type=int, default=0, show_default=True, help="CPU to pin the sim to (-1: no pin).")
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True)
@click.option("--markdown-out", type=click.Path(path_type=Path), default=DEFAULT_MD, show_default=True)
def sim(
    profile: str,
    concurrency: tuple[int, ...],
    stream_interval: tuple[int, ...],
    duration: float,
    warmup: float,
    max_tokens: int,
    sim_cpu: int,
    out: Path,
    markdown_out: Path,
) -> None:
    """Streamed tokens/s and concurrent streams one sim process sustains on one core."""
    ncpu = os.cpu_count() or 1
    pin_sim = None if sim_cpu < 0 else sim_cpu
    client_cpu = None if pin_sim is None or ncpu < 2 else (pin_sim + 1) % ncpu
    started = time.time()
    load_before = os.getloadavg()
    levels = []
    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        for interval in stream_interval:
            for n in concurrency:
                click.echo(f"bench sim: stream interval {interval}, {n} streams ...", err=True)
                lv = run_level(
                    profile, n, interval, duration, warmup, max_tokens, pin_sim, client_cpu, Path(tmp)
                )
                lv["sustained"] = sustained(lv)
                levels.append(lv)
                click.echo(
                    f"  {lv['tokens_per_s']:,.0f} tok/s (sim time {100 * lv['sim_time_fidelity']:.1f} %), "
                    f"sim CPU {lv['sim_cpu_pct']:.0f} %, "
                    f"first-token lag p99 {lv['first_token_lag_ms']['p99']:.1f} ms, "
                    f"errors {lv['errors']}, sustained={lv['sustained']}",
                    err=True,
                )
    result = {
        "benchmark": "sim",
        "started": started,
        "ended": time.time(),
        "git_sha": _git_sha(),
        "host": {
            "cpu": cpu_model(),
            "cpus": ncpu,
            "python": platform.python_version(),
            # other jobs on the host steal the pinned cores: the 1-min load average says how busy it was
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
        "config": {
            "profile": profile,
            "duration_s": duration,
            "warmup_s": warmup,
            "max_tokens": max_tokens,
            "sim_cpu": pin_sim,
            "client_cpu": client_cpu,
        },
        "levels": levels,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    markdown_out.parent.mkdir(parents=True, exist_ok=True)
    markdown_out.write_text(markdown(result))
    click.echo(f"wrote {out} and {markdown_out}", err=True)
