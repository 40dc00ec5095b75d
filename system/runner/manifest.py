"""Run manifest (resolved config, git SHA, versions, host, CPU, GPUs) and atomic JSON writes."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from system.telemetry.nvml import gpu_inventory

# packages whose versions change what is measured
PACKAGES = (
    "expert-router",
    "fastapi",
    "uvicorn",
    "uvloop",
    "aiohttp",
    "pydantic",
    "numpy",
    "scikit-learn",
    "pandas",
    "locust",
    "psutil",
    "nvidia-ml-py",
    "vllm",
    "transformers",
    "torch",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temp file beside `path`, fsync, rename: readers see old or new, never half."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """{"sha", "dirty"}; None values outside a git checkout (e.g. an installed wheel)."""

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_model": cpu_model(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": affinity,
        "mem_total_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def build_manifest(
    resolved_config: dict[str, Any], *, fingerprint: str, argv: list[str] | None = None
) -> dict:
    return {
        "experiment": resolved_config.get("name"),
        "config": resolved_config,
        "config_fingerprint": fingerprint,
        "git": git_info(),
        "packages": package_versions(),
        "host": host_info(),
        "gpu": gpu_inventory(),
        "argv": list(sys.argv if argv is None else argv),
        "started_ts": time.time(),
        "ended_ts": None,
        "status": "running",
        "runs": [],  # one entry per invocation (a resumed run has several)
    }
