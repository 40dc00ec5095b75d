"""Test helpers: the fake OpenAI upstream as a subprocess, a keyword classifier, an in-process gateway."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import uvicorn

from system.gateway.app import create_app
from system.gateway.config import GatewayConfig
from system.processes import ServerProcess, free_port


def fake_upstream(
    log_dir: Path, ports: Sequence[int], *, ttft_ms: float = 20, itl_ms: float = 5, chunks: int = 10
) -> ServerProcess:
    """A `system.bench.fake_upstream` process listening on `ports` (not started: use `with`)."""
    cmd = [
        sys.executable,
        "-m",
        "system.bench.fake_upstream",
        "--ttft-ms",
        str(ttft_ms),
        "--itl-ms",
        str(itl_ms),
    ]
    cmd += ["--chunks", str(chunks)]
    for p in ports:
        cmd += ["--port", str(p)]
    return ServerProcess(
        cmd,
        name=f"fake-upstream-{ports[0]}",
        health_url=f"http://127.0.0.1:{ports[0]}/health",
        log_path=log_dir / f"fake-{ports[0]}.log",
        startup_timeout_s=20,
    )


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
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
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
