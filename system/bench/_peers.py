"""Processes of the gateway benchmark: upstream servers, our gateway and the peer proxies, CPU-pinned."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from system.processes import ServerProcess, free_port


def pinned(cmd: list[str], cores: str | None) -> list[str]:
    """Prefix `cmd` with taskset so the process *and its threads/children* stay on `cores`."""
    if cores and shutil.which("taskset"):
        return ["taskset", "-c", cores, *cmd]
    return cmd


def core_plan(n_cpus: int) -> dict[str, str | None]:
    """Which cores the load client, the upstream and the proxy under test get.

    The proxy always gets a core of its own, the same one for every proxy, so each is measured on equal
    ground; with 2 cores the client and the upstream share the other one.
    """
    if n_cpus >= 3:
        return {"client": "0", "upstream": "1", "proxy": "2"}
    if n_cpus == 2:
        return {"client": "0", "upstream": "0", "proxy": "1"}
    return {"client": None, "upstream": None, "proxy": None}


@dataclass
class Target:
    """One way to reach the upstreams: directly, or through a proxy process."""

    name: str
    urls: list[str]
    headers: list[str] = field(default_factory=list)
    proc: ServerProcess | None = None
    error: str | None = None

    def cpu_seconds(self) -> float:
        """CPU time of the proxy and all its children so far (0 for direct)."""
        if self.proc is None or not self.proc.alive():
            return 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
        return total


def _python(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def start_fake_upstream(
    work: Path,
    ports: list[int],
    ttft_ms: float,
    itl_ms: float,
    chunks: int,
    cores: str | None,
    accept: str = "batch",
) -> ServerProcess:
    cmd = [*_python("system.bench.fake_upstream"), "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)]
    cmd += ["--chunks", str(chunks), "--accept", accept]
    for p in ports:
        cmd += ["--port", str(p)]
    return ServerProcess(
        pinned(cmd, cores),
        name="fake-upstream",
        health_url=f"http://127.0.0.1:{ports[0]}/health",
        log_path=work / "fake-upstream.log",
    ).start()


def start_sim(work: Path, port: int, name: str, profile: str, cores: str | None) -> ServerProcess:
    cmd = [*_python("system.cli"), "sim", "--profile", profile, "--port", str(port), "--model-name", name]
    return ServerProcess(
        pinned(cmd, cores),
        name=name,
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=work / f"{name}.log",
    ).start()


def start_our_gateway(
    work: Path,
    upstreams: list[str],
    classifier: Path,
    cores: str | None,
    name: str = "gateway",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> Target:
    """Our gateway; `args`/`env` select a server option (`--workers 2`, `--upstream-client aiohttp`...),
    `config` replaces top-level keys of its YAML (`policy`...)."""
    port = free_port()
    cfg = {
        "policy": {"kind": "cluster"},
        "classifier": str(classifier),
        "experts": [{"name": f"e{i}", "url": u} for i, u in enumerate(upstreams)],
        "limits": {"max_in_flight": 100_000},
        **(config or {}),
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [
        *_python("system.cli"),
        "gateway",
        "--config",
        str(path),
        "--port",
        str(port),
        "--log-level",
        "warning",
        *args,
    ]
    try:
        proc = ServerProcess(
            pinned(cmd, cores),
            name=name,
            health_url=f"http://127.0.0.1:{port}/health",
            log_path=work / f"{name}.log",
            env=dict(os.environ, **(env or {})),
            # every process loads the classifier (skops import included): slow on a busy 2-core host
            startup_timeout_s=240,
        ).start()
    except Exception as e:
        return Target(name, [], error=f"{name} did not start: {e}"[:2000])
    return Target(name, [f"http://127.0.0.1:{port}/v1/chat/completions"], proc=proc)


def start_vllm_router(work: Path, upstreams: list[str], cores: str | None) -> Target:
    exe = shutil.which("vllm-router") or str(Path(sys.executable).with_name("vllm-router"))
    if not Path(exe).exists():
        return Target("vllm_router", [], error="vllm-router not installed (pip install -e '.[bench]')")
    port = free_port()
    cmd = [exe, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *upstreams]
    # round robin: a real policy decision per request; metrics on a free port (default 29000 may clash)
    cmd += ["--policy", "round_robin", "--log-level", "warning", "--prometheus-port", str(free_port())]
    cmd += ["--max-concurrent-requests", "100000"]
    try:
        proc = ServerProcess(
            pinned(cmd, cores),
            name="vllm-router",
            health_url=f"http://127.0.0.1:{port}/health",
            log_path=work / "vllm-router.log",
        ).start()
    except Exception as e:
        return Target("vllm_router", [], error=f"vllm-router did not start: {e}"[:2000])
    return Target("vllm_router", [f"http://127.0.0.1:{port}/v1/chat/completions"], proc=proc)


def start_litellm(work: Path, upstreams: list[str], model: str, cores: str | None) -> Target:
    exe = shutil.which("litellm") or str(Path(sys.executable).with_name("litellm"))
    if not Path(exe).exists():
        return Target("litellm", [], error="litellm[proxy] not installed (pip install -e '.[bench]')")
    port = free_port()
    key = "sk-" + secrets.token_hex(16)  # the proxy refuses to start without a master key
    cfg = {
        "model_list": [
            {
                "model_name": "auto",
                "litellm_params": {"model": f"openai/{model}", "api_base": u + "/v1", "api_key": "x"},
            }
            for u in upstreams
        ],
        "litellm_settings": {"telemetry": False},
    }
    path = work / "litellm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, LITELLM_MASTER_KEY=key, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
    cmd = [exe, "--config", str(path), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    try:
        proc = ServerProcess(
            pinned(cmd, cores),
            name="litellm",
            health_url=f"http://127.0.0.1:{port}/health/liveliness",
            log_path=work / "litellm.log",
            env=env,
            startup_timeout_s=180,
        ).start()
    except Exception as e:
        return Target("litellm", [], error=f"litellm proxy did not start: {e}"[:2000])
    return Target(
        "litellm",
        [f"http://127.0.0.1:{port}/v1/chat/completions"],
        headers=[f"Authorization: Bearer {key}"],
        proc=proc,
    )
