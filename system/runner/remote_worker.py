"""`expert-router loadgen worker --master HOST:PORT`: a Locust worker that lives from step to step.

For every step the runner announces (control endpoint on PORT + 1, system/runner/remote.py) it measures
its clock offset to the runner, runs `locust --worker` against that step's master in a fresh directory,
and when the master ends the step uploads the record files its Locust process wrote. It exits when the
runner says the run is over, or after `--max-idle-s` without a reachable runner.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from system.records import record_files
from system.runner.remote import CONTROL_PORT_OFFSET


def parse_master(master: str) -> tuple[str, int]:
    host, sep, port = master.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise click.BadParameter(f"--master must be HOST:PORT, got {master!r}")
    return host.strip("[]"), int(port)


def _get(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return dict(json.loads(r.read()))


def _send(url: str, method: str, body: bytes = b"", timeout_s: float = 60.0) -> dict[str, Any]:
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        return dict(json.loads(r.read()))


def clock_offset(control: str, samples: int = 7) -> tuple[float, float]:
    """(runner clock - this clock, round trip) in seconds, from the sample with the shortest round trip:
    offset = runner_ts - (sent + received) / 2, good to about half that round trip."""
    best = (math.nan, math.inf)
    for _ in range(samples):
        t0 = time.time()
        ts = float(_get(f"{control}/clock")["ts"])
        t1 = time.time()
        if t1 - t0 < best[1]:
            best = (ts - (t0 + t1) / 2.0, t1 - t0)
    return best


def run_step(master_host: str, master_port: int, control: str, step: str, work: Path, worker: str) -> int:
    """One step: measure the clock, run the Locust worker until the master quits, upload its records."""
    from system.runner.locust import locustfile_path

    offset, rtt = clock_offset(control)
    d = work / f"step-{len(list(work.iterdir())):04d}"
    d.mkdir(parents=True)
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--worker"]
    cmd += ["--master-host", master_host, "--master-port", str(master_port)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(d / "locust-worker.log", "ab") as fh:
        # cwd d: the master's relative `--records-dir records` lands in d/records
        rc = subprocess.run(
            cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=d, env=env
        ).returncode
    files = record_files(d / "records")
    for f in files:
        body = f.read_bytes()
        q = urllib.parse.urlencode(
            {"step": step, "worker": worker, "file": f.name, "sha256": hashlib.sha256(body).hexdigest()}
        )
        for attempt in range(3):  # a damaged or interrupted upload is simply sent again (it replaces)
            try:
                _send(f"{control}/records?{q}", "PUT", body)
                break
            except (urllib.error.URLError, OSError):
                if attempt == 2:
                    raise
                time.sleep(1.0)
    q = urllib.parse.urlencode(
        {
            "step": step,
            "worker": worker,
            "files": len(files),
            "clock_offset_s": repr(offset),
            "rtt_s": repr(rtt),
            "host": socket.gethostname(),
            "rc": rc,
        }
    )
    _send(f"{control}/done?{q}", "POST")
    return rc


def worker_loop(
    master: str, *, work_dir: Path | None = None, poll_s: float = 0.5, max_idle_s: float = 600.0
) -> int:
    """Serve steps until the runner says done; returns the number of steps served."""
    host, port = parse_master(master)
    control = f"http://{host}:{port + CONTROL_PORT_OFFSET}"
    worker = f"{socket.gethostname()}-{os.getpid()}"
    work = work_dir or Path(tempfile.mkdtemp(prefix="loadgen-worker-"))
    work.mkdir(parents=True, exist_ok=True)
    served: set[str] = set()
    last_contact = time.monotonic()
    while True:
        try:
            state = _get(f"{control}/step")
            last_contact = time.monotonic()
        except (urllib.error.URLError, OSError, ValueError):
            if time.monotonic() - last_contact > max_idle_s:
                click.echo(f"no runner at {control} for {max_idle_s:g} s; exiting", err=True)
                return len(served)
            time.sleep(poll_s)
            continue
        if state.get("done"):
            return len(served)
        step = state.get("step")
        if not step or step in served:
            time.sleep(poll_s)
            continue
        served.add(step)
        rc = run_step(host, port, control, step, work, worker)
        click.echo(f"step {step}: locust worker exited with {rc}", err=True)


@click.group()
def loadgen() -> None:
    """Load generation from other hosts (Locust workers for `experiment run --remote-workers`)."""


@loadgen.command("worker")
@click.option("--master", required=True, help="HOST:PORT of the runner's Locust master (--master-port).")
@click.option("--work-dir", type=click.Path(file_okay=False), default=None, help="Per-step logs and records.")
@click.option(
    "--max-idle-s", type=float, default=600.0, show_default=True, help="Exit after so long unreachable."
)
def worker(master: str, work_dir: str | None, max_idle_s: float) -> None:
    """Run one Locust worker for every step of a run on another host, until the run ends."""
    n = worker_loop(master, work_dir=Path(work_dir) if work_dir else None, max_idle_s=max_idle_s)
    click.echo(f"run over: served {n} step(s)", err=True)
