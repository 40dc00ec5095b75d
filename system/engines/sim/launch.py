"""Start a sim as a subprocess through ServerProcess (used by tests, benchmarks and the runner)."""

from __future__ import annotations

import sys
from pathlib import Path

from system.processes import ServerProcess, free_port


def sim_command(profile: str, port: int, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """argv for `expert-router sim` run with this interpreter (no dependence on PATH)."""
    return [
        sys.executable,
        "-m",
        "system.cli",
        "sim",
        "--profile",
        profile,
        "--port",
        str(port),
        "--host",
        host,
        *extra,
    ]


def sim_process(
    profile: str,
    log_path: str | Path,
    *extra: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    startup_timeout_s: float = 30.0,
) -> tuple[ServerProcess, str]:
    """(unstarted ServerProcess, base URL). Use as `with proc:`; it polls /health until ready."""
    port = port or free_port(host)
    base = f"http://{host}:{port}"
    proc = ServerProcess(
        sim_command(profile, port, *extra, host=host),
        name=f"sim-{profile}-{port}",
        health_url=f"{base}/health",
        log_path=log_path,
        startup_timeout_s=startup_timeout_s,
        stop_timeout_s=5.0,
    )
    return proc, base
