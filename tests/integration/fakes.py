"""Test helpers: the fake OpenAI upstream as a subprocess, a keyword classifier, an in-process gateway."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import uvicorn

from system.gateway.app import create_app
from system.gateway.cli import edge_options
from system.gateway.config import GatewayConfig
from system.processes import ServerProcess, free_port

FAKE_UPSTREAM = [sys.executable, "-m", "system.bench.fake_upstream"]


def fake_upstream(
    log_dir: Path,
    ports: Sequence[int],
    *args: str,
    ttft_ms: float = 20,
    itl_ms: float = 5,
    chunks: int = 10,
    prefix: Sequence[str] = (),
) -> ServerProcess:
    """A `system.bench.fake_upstream` process listening on `ports` (not started: use `with`); `args` are
    more of its flags (faults: --drop-after-request, --abort-after-tokens K, ...). `prefix` goes before the
    command (e.g. a shell that lowers the fd limit)."""
    cmd = [*prefix, *FAKE_UPSTREAM, "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms)]
    cmd += ["--chunks", str(chunks), *args]
    for p in ports:
        cmd += ["--port", str(p)]
    return ServerProcess(
        cmd,
        name=f"fake-upstream-{ports[0]}",
        health_url=f"http://127.0.0.1:{ports[0]}/health",
        log_path=log_dir / f"fake-{ports[0]}.log",
        startup_timeout_s=20,
    )


def fake_server(log_dir: Path, *args: str) -> ServerProcess:
    """The fake upstream on a free port for load-generator tests (not started): a role-only chunk with the
    headers (like vLLM), 16 tokens unless max_tokens says otherwise, 50 ms TTFT and 5 ms ITL unless `args`
    (its flags, e.g. "--ttft-ms", "300", "--fail-every", "3") say otherwise."""
    port = free_port()
    cmd = [*FAKE_UPSTREAM, "--port", str(port), "--chunks", "16", "--role-chunk"]
    cmd += ["--ttft-ms", "50", "--itl-ms", "5", *args]  # argparse: the last of a repeated flag wins
    return ServerProcess(
        cmd,
        name="fake-openai",
        health_url=f"http://127.0.0.1:{port}/health",
        log_path=log_dir / f"fake-{port}.log",
    )


def host_of(srv: ServerProcess) -> str:
    """Base URL of a server started from `fake_server` (its health URL without /health)."""
    assert srv.health_url is not None
    return srv.health_url.rsplit("/", 1)[0]


class KeywordClassifier:
    """Stands in for PromptClassifier: cluster 1 for prompts mentioning code, else 0 (k=2)."""

    k = 2

    def __init__(self, k: int = 2) -> None:
        self.k = k
        self.calls = 0

    def predict(self, text: str) -> int:
        self.calls += 1
        return 1 if "code" in text.lower() else 0

    def rank(self, text: str) -> list[int]:
        first = self.predict(text)
        return [first, *[c for c in range(self.k) if c != first]]


@contextlib.asynccontextmanager
async def gateway_in_process(
    cfg: GatewayConfig, classifier: object | None = None, loader: Callable[[Path], object] | None = None
) -> AsyncIterator[str]:
    """Serve `create_app(cfg)` with uvicorn on a free loopback port inside this event loop; yields its URL.

    `classifier` is returned by the classifier loader (no files needed); `loader` replaces the loader itself.
    """
    port = free_port()
    if loader is None and classifier is not None:
        loader = lambda _path: classifier  # noqa: E731
    app = create_app(cfg, classifier_loader=loader)  # type: ignore[arg-type]
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        **edge_options(cfg, soft),  # the same HTTP protocol and limits as the CLI
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        if task.done():
            task.result()  # raise the startup error
        await asyncio.sleep(0.02)
    else:
        raise RuntimeError("in-process gateway did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
