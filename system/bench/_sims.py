"""Two (or N) simulators behind the gateway on free loopback ports: the benches' system under test."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from system.processes import ServerProcess, free_port


@dataclass
class SimStack:
    sims: list[ServerProcess]
    sim_urls: list[str]
    gateway: ServerProcess | None
    gateway_url: str | None

    @property
    def target(self) -> str:
        """Where load goes: the gateway when there is one, else the first sim."""
        return self.gateway_url or self.sim_urls[0]


def sim_command(name: str, port: int, profile: str, seed: int, extra: Sequence[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "system.cli", "sim", "--profile", profile, "--port", str(port)]
    return [*cmd, "--model-name", name, "--seed", str(seed), *extra]


@contextlib.contextmanager
def sim_stack(
    workdir: str | Path,
    *,
    n_sims: int = 2,
    profile: str = "debug",
    gateway: bool = True,
    policy: str = "round_robin",
    sim_args: Sequence[str] = (),
) -> Iterator[SimStack]:
    """Start `n_sims` sims (and the gateway in front, `policy` needing no classifier); stop all on exit."""
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    sims: list[ServerProcess] = []
    gw: ServerProcess | None = None
    try:
        urls = []
        for i in range(n_sims):
            port = free_port()
            name = f"sim{i}"
            proc = ServerProcess(
                sim_command(name, port, profile, seed=1000 * (i + 1), extra=sim_args),
                name=name,
                health_url=f"http://127.0.0.1:{port}/health",
                log_path=work / f"{name}.log",
            )
            sims.append(proc.start())
            urls.append(f"http://127.0.0.1:{port}")
        gw_url = None
        if gateway:
            port = free_port()
            cfg = {
                "policy": {"kind": policy},
                "experts": [{"name": f"sim{i}", "url": u, "model": f"sim{i}"} for i, u in enumerate(urls)],
                "port": port,
            }
            cfg_path = work / "gateway.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            gw = ServerProcess(
                [
                    sys.executable,
                    "-m",
                    "system.cli",
                    "gateway",
                    "--config",
                    str(cfg_path),
                    "--port",
                    str(port),
                ],
                name="gateway",
                health_url=f"http://127.0.0.1:{port}/health",
                log_path=work / "gateway.log",
            ).start()
            gw_url = f"http://127.0.0.1:{port}"
        yield SimStack(sims, urls, gw, gw_url)
    finally:
        for p in [gw, *sims]:
            if p is not None:
                p.stop()
