"""`ServerProcess`: start a server in its own process group, poll its health, fail fast, kill cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType


class ServerStartError(RuntimeError):
    """The server died or never became healthy; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (bind to port 0 and read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tail(path: Path, n_lines: int = 40) -> str:
    """Last `n_lines` of a text file ('' if it does not exist)."""
    try:
        data = path.read_bytes()[-16384:]
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-n_lines:])


class ServerProcess:
    """Context manager for one server process.

    - own session / process group, so the whole tree (e.g. vLLM's workers) is killed together;
    - stdout+stderr to `log_path`;
    - `health_url` polled until HTTP 200 within `startup_timeout_s`; if the process exits first, or the
      deadline passes, raises ServerStartError with the log tail (fail fast, never hang);
    - on exit: SIGTERM to the group, SIGKILL after `stop_timeout_s`.
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        name: str,
        health_url: str | None,
        log_path: str | Path,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        startup_timeout_s: float = 60.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.cmd = [str(c) for c in cmd]
        self.name = name
        self.health_url = health_url
        self.log_path = Path(log_path)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as e:
            log.close()
            raise ServerStartError(f"{self.name}: cannot execute {self.cmd[0]!r}: {e}") from e
        log.close()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self) -> None:
        if self.health_url is None:
            return
        deadline = time.monotonic() + self.startup_timeout_s
        delay = 0.05
        while True:
            assert self.proc is not None
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {rc} before becoming healthy "
                    f"({' '.join(self.cmd)}); log tail ({self.log_path}):\n{tail(self.log_path)}"
                )
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.name} not healthy at {self.health_url} after {self.startup_timeout_s:.0f}s; "
                    f"log tail ({self.log_path}):\n{tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """Terminate the whole process group; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # children that outlived the leader (same group) are killed too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def kill(self) -> None:
        """Hard kill now (fault-injection tests: an expert dies mid-stream)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
