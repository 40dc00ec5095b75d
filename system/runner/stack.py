"""A running stack for one configuration: expert engines (started in parallel) plus the gateway in front."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from system.engines.base import LOOPBACK, LaunchSpec, build_launch, engine_process
from system.engines.external import discover, wait_ready
from system.processes import ServerProcess, ServerStartError, free_port, tail
from system.runner.config import Configuration

GATEWAY_NAME = "gateway"
SERVERS_FILE = "servers.json"  # pids of a running stack; left behind only if the runner itself was killed


@dataclass
class PlannedServer:
    """A server the stack will start: what, where, with which command."""

    name: str
    role: str  # "expert" | "gateway"
    port: int
    launch: LaunchSpec
    hosted_by: str | None = None  # a co-located sim expert served by another expert's sim process


def expert_seed(base_seed: int, index: int) -> int:
    # distinct per expert (different output-length draws) yet reproducible
    return base_seed + 1000 * (index + 1)


def gateway_config(
    conf: Configuration, experts: list[PlannedServer], classifier_dir: Path | None
) -> dict[str, Any]:
    """The gateway YAML (see issue 3 contract): policy, classifier, experts in cluster order, extra keys."""
    cfg: dict[str, Any] = dict(conf.gateway.extra)
    cfg["policy"] = dict(conf.gateway.policy)
    if classifier_dir is not None:
        cfg["classifier"] = str(classifier_dir)
    cfg["experts"] = [
        {"name": e.name, "url": e.launch.base_url, "model": e.launch.served_model} for e in experts
    ]
    return cfg


def plan_stack(
    conf: Configuration,
    *,
    seed: int,
    host: str = LOOPBACK,
    ports: list[int] | None = None,
    gateway_config_path: Path | None = None,
) -> list[PlannedServer]:
    """The servers of `conf` with their commands; `ports` (experts first, then gateway) or free ones now."""
    n = len(conf.experts) + (1 if conf.uses_gateway else 0)
    ports = list(ports) if ports is not None else [free_port(host) for _ in range(n)]
    if len(ports) < n:
        raise ValueError(f"need {n} ports, got {len(ports)}")
    out = []
    for i, e in enumerate(conf.experts):
        launch = build_launch(e.engine, name=e.name, port=ports[i], host=host, seed=expert_seed(seed, i))
        out.append(PlannedServer(e.name, "expert", ports[i], launch))
    colocate_sims(conf, out)
    if conf.uses_gateway and conf.gateway.external:
        gw = conf.gateway
        assert gw.url is not None
        launch = LaunchSpec(
            cmd=[],
            env={},
            health_url=f"{gw.url}{gw.health_path or '/v1/models'}",
            base_url=gw.url,
            metrics_url=gw.metrics_url,
            served_model=gw.model,
            startup_timeout_s=gw.startup_timeout_s,
            external=True,
        )
        out.append(PlannedServer(GATEWAY_NAME, "gateway", 0, launch))
    elif conf.uses_gateway:
        port = ports[len(conf.experts)]
        base = f"http://{host}:{port}"
        cfg_path = str(gateway_config_path) if gateway_config_path else "<run-dir>/gateway.yaml"
        cmd = [sys.executable, "-m", "system.cli", "gateway", "--config", cfg_path]
        cmd += ["--host", host, "--port", str(port)]
        launch = LaunchSpec(
            cmd=cmd,
            env={},
            health_url=f"{base}/health",
            base_url=base,
            metrics_url=f"{base}/metrics",
            served_model="auto",
            startup_timeout_s=conf.gateway.startup_timeout_s,
        )
        out.append(PlannedServer(GATEWAY_NAME, "gateway", port, launch))
    return out


def colocate_sims(conf: Configuration, experts: list[PlannedServer]) -> None:
    """With share_gpus, sim experts given the same simulated GPU run in one sim process (one shared GPU
    clock): the first of each group hosts the others (`sim --colocate`), which get no process of their own."""
    if not conf.share_gpus:
        return
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(conf.experts):
        if e.engine.kind == "sim" and e.engine.gpus:
            groups.setdefault(e.engine.gpus[0], []).append(i)
    for idxs in groups.values():
        host = experts[idxs[0]]
        for j in idxs[1:]:
            member, spec = experts[j], conf.experts[j].engine
            frac = f":{spec.memory_fraction}" if spec.memory_fraction is not None else ""
            host.launch.cmd += ["--colocate", f"{member.name}={spec.profile}@{member.port}{frac}"]
            member.hosted_by = host.name


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_all_healthy(procs: list[tuple[ServerProcess, str, float]]) -> None:
    """Poll every (process, health URL, timeout) together; fail fast on the first that dies or times out."""
    start = time.monotonic()
    pending = list(procs)
    delay = 0.05
    while pending:
        still = []
        for sp, url, timeout_s in pending:
            rc = sp.proc.poll() if sp.proc is not None else None
            if rc is not None:
                raise ServerStartError(
                    f"{sp.name} exited with code {rc} before becoming healthy ({' '.join(sp.cmd)}); "
                    f"log tail ({sp.log_path}):\n{tail(sp.log_path)}"
                )
            if _healthy(url):
                continue
            if time.monotonic() - start > timeout_s:
                raise ServerStartError(
                    f"{sp.name} not healthy at {url} after {timeout_s:.0f}s; "
                    f"log tail ({sp.log_path}):\n{tail(sp.log_path)}"
                )
            still.append((sp, url, timeout_s))
        pending = still
        if pending:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def warm_up(launch: LaunchSpec, n: int, timeout_s: float = 300.0) -> None:
    """Send `n` tiny chat completions (one at a time) so first-request costs happen before measuring."""
    body = json.dumps(
        {
            "model": launch.served_model,
            "messages": [{"role": "user", "content": "warm up"}],
            "max_tokens": 4,
            "stream": False,
        }
    ).encode()
    for i in range(n):
        req = urllib.request.Request(
            f"{launch.base_url}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            raise ServerStartError(f"warm-up request {i + 1}/{n} to {launch.base_url} failed: {e}") from e


def wait_groups_gone(pgids: list[int], timeout_s: float = 30.0) -> None:
    """Wait until no process of these groups is left: killed vLLM workers hold GPU memory until they are gone,
    and the next configuration's engines would start out of memory."""
    import psutil

    if not pgids:
        return
    wanted = set(pgids)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = []
        for p in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) in wanted:
                    left.append(p.pid)
        if not left:
            return
        time.sleep(0.1)


class Stack:
    """Context manager: start experts (in parallel) and the gateway; stop everything, whatever happens.

    `work_dir` receives gateway.yaml and logs/<name>.log. The Locust target is `target_url` with model
    `target_model` ("auto" through the gateway, the engine's served name when a single engine is hit
    directly).
    """

    def __init__(
        self,
        conf: Configuration,
        *,
        work_dir: Path,
        seed: int,
        classifier_dir: Path | None = None,
        host: str = LOOPBACK,
        ports: list[int] | None = None,
    ) -> None:
        self.conf = conf
        self.work_dir = Path(work_dir).resolve()  # the gateway reads gateway.yaml from its own cwd
        self.seed = seed
        self.classifier_dir = classifier_dir
        self.host = host
        self._ports = ports
        self.planned: list[PlannedServer] = []
        self.procs: dict[str, ServerProcess] = {}
        self.started_ts = float("nan")
        self.stale_killed: list[int] = []
        # name -> what each external server said about itself (models, version): goes into the manifest
        self.endpoints: dict[str, dict[str, Any]] = {}

    @property
    def log_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def gateway_config_path(self) -> Path:
        return self.work_dir / "gateway.yaml"

    def reap_stale(self) -> list[int]:
        """Kill servers a previous, killed runner left behind (their own sessions outlive it; vLLM would keep
        its GPU memory). Only process groups whose leader still runs the recorded command are touched."""
        import psutil

        path = self.work_dir / SERVERS_FILE
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        killed = []
        for info in recorded.values():
            try:
                if psutil.Process(info["pid"]).cmdline() != info["cmd"]:
                    continue
                os.killpg(info["pid"], signal.SIGKILL)
                killed.append(int(info["pid"]))
            except (psutil.Error, ProcessLookupError, PermissionError, KeyError, TypeError):
                continue
        path.unlink(missing_ok=True)
        return killed

    def _record_servers(self) -> None:
        data = {n: {"pid": sp.pid, "cmd": sp.cmd} for n, sp in self.procs.items() if sp.proc is not None}
        tmp = self.work_dir / (SERVERS_FILE + ".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.work_dir / SERVERS_FILE)

    def start(self) -> Stack:
        if self.conf.needs_classifier and self.classifier_dir is None:
            raise ValueError(f"configuration {self.conf.name!r} routes with a classifier but none was given")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.stale_killed = self.reap_stale()
        self.planned = plan_stack(
            self.conf,
            seed=self.seed,
            host=self.host,
            ports=self._ports,
            gateway_config_path=self.gateway_config_path,
        )
        experts = [p for p in self.planned if p.role == "expert"]
        try:
            # Popen every expert first (health_url=None returns at once), then wait for all of them together:
            # N vLLM engines load their weights concurrently instead of one after another.
            waits = []
            for p in experts:
                if p.hosted_by is not None or p.launch.external:  # hosted: wait for its port below
                    continue
                sp = engine_process(p.launch, name=p.name, log_dir=self.log_dir)
                sp.health_url = None
                self.procs[p.name] = sp
                sp.start()
                self._record_servers()
                sp.health_url = p.launch.health_url
                waits.append((sp, p.launch.health_url, p.launch.startup_timeout_s))
            for p in experts:
                if p.hosted_by is not None:
                    waits.append((self.procs[p.hosted_by], p.launch.health_url, p.launch.startup_timeout_s))
            wait_all_healthy(waits)
            self._probe_external([p for p in experts if p.launch.external])
            for p, e in zip(experts, self.conf.experts, strict=True):
                warm_up(p.launch, e.engine.warmup_requests)
            gw = [p for p in self.planned if p.role == "gateway"]
            if gw and gw[0].launch.external:
                self._probe_external(gw)
            elif gw:
                cfg = gateway_config(self.conf, experts, self.classifier_dir)
                self.gateway_config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
                sp = engine_process(gw[0].launch, name=GATEWAY_NAME, log_dir=self.log_dir)
                self.procs[GATEWAY_NAME] = sp
                sp.health_url, health = None, sp.health_url
                sp.start()  # Popen only: recorded before the health wait, like the experts
                self._record_servers()
                sp.health_url = health
                sp.wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.started_ts = time.time()
        return self

    def _probe_external(self, servers: list[PlannedServer]) -> None:
        """Wait until every external server answers its health URL, then record its models and version and
        fill in the served model it was not given (ExternalNotReady, a ServerStartError, says why not)."""
        if not servers:
            return
        wait_ready({p.name: (p.launch.health_url, p.launch.startup_timeout_s) for p in servers})
        for p in servers:
            given = p.launch.served_model or None
            info = discover(p.name, p.role, p.launch.base_url, model=given)
            info["metrics_url"] = p.launch.metrics_url
            info["health_url"] = p.launch.health_url
            p.launch.served_model = info["served_model"]
            self.endpoints[p.name] = info

    def stop(self) -> None:
        groups = [sp.pid for sp in self.procs.values() if sp.proc is not None]
        # gateway first, so it does not log a storm of upstream errors while the experts go away
        for name in sorted(self.procs, key=lambda n: n != GATEWAY_NAME):
            with contextlib.suppress(Exception):
                self.procs[name].stop()
        self.procs = {}
        wait_groups_gone(groups)
        (self.work_dir / SERVERS_FILE).unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()

    # what the runner needs ---------------------------------------------------------------------------------
    def _server(self, role: str) -> PlannedServer:
        return next(p for p in self.planned if p.role == role)

    @property
    def target_url(self) -> str:
        return self._server("gateway" if self.conf.uses_gateway else "expert").launch.base_url

    @property
    def target_model(self) -> str:
        return self._server("gateway" if self.conf.uses_gateway else "expert").launch.served_model

    def metrics_targets(self) -> dict[str, str]:
        return {p.name: p.launch.metrics_url for p in self.planned if p.launch.metrics_url}

    def pids(self) -> dict[str, int]:
        return {name: sp.pid for name, sp in self.procs.items() if sp.proc is not None}

    def sim_gpu_urls(self) -> list[str]:
        """One base URL per sim process (each simulates one GPU, shared by its co-located experts)."""
        kinds = {e.name: e.engine.kind for e in self.conf.experts}
        return [
            p.launch.base_url
            for p in self.planned
            if p.role == "expert" and kinds.get(p.name) == "sim" and p.hosted_by is None
        ]

    def gpus(self) -> list[int]:
        return sorted({g for p in self.planned for g in p.launch.gpus})

    def dead(self) -> dict[str, str]:
        """name -> log tail of every server that is no longer running."""
        return {
            name: f"exit code {sp.proc.returncode if sp.proc else None}; log tail:\n{tail(sp.log_path, 20)}"
            for name, sp in self.procs.items()
            if not sp.alive()
        }

    def describe(self) -> dict[str, Any]:
        return {
            "target_url": self.target_url,
            "target_model": self.target_model,
            "servers": [
                {"name": p.name, "role": p.role, "url": p.launch.base_url, "pid": self.procs[p.name].pid}
                for p in self.planned
                if p.name in self.procs and self.procs[p.name].proc is not None
            ]
            + [
                {"name": p.name, "role": p.role, "url": p.launch.base_url, "pid": None, "external": True}
                for p in self.planned
                if p.launch.external
            ],
        }

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
