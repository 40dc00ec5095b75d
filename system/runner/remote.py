"""Locust workers on other hosts: the runner's side (a Locust master per step, plus a small control endpoint
that announces steps, measures worker clocks and receives every worker's record files).

The control endpoint listens on the master port + 1. A worker (`expert-router loadgen worker --master
HOST:PORT`, system/runner/remote_worker.py) polls it for the current step, connects a `locust --worker` to
the step's master, and after the step uploads its records. The master is given the relative records dir
`records`, which Locust forwards to the workers: each worker writes under its own working directory, never
into a path of the runner's host. Uploads carry a SHA-256 and are keyed by the record file's name (one per
Locust process: hostname-pid), so a repeated upload replaces, never duplicates.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from system.records import RECORD_FILE_PREFIX, RECORD_FILE_SUFFIX

CONTROL_PORT_OFFSET = 1
_FILE = re.compile(rf"^{RECORD_FILE_PREFIX}[A-Za-z0-9._-]+{re.escape(RECORD_FILE_SUFFIX)}$")
_WORKER = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class Control:
    """The control endpoint (stdlib HTTP server on a thread):

    - `GET /clock` -> {"ts": epoch seconds} (workers estimate their offset NTP-style);
    - `GET /step` -> {"step": id or null, "done": bool};
    - `PUT /records?step=&worker=&file=&sha256=` (body: one record CSV) -> stored in the step's records dir;
    - `POST /done?step=&worker=&files=&clock_offset_s=&rtt_s=&host=&rc=` -> that worker finished the step.
    """

    def __init__(self, bind_host: str, port: int) -> None:
        self.bind_host, self.port = bind_host, port
        self._lock = threading.Condition()
        self._step: str | None = None
        self._records_dir: Path | None = None
        self._done = False
        self._finished: dict[str, dict[str, dict[str, Any]]] = {}  # step -> worker -> its report
        self._files: dict[str, dict[str, dict[str, Any]]] = {}  # step -> file name -> meta
        self._server: ThreadingHTTPServer | None = None

    # runner side --------------------------------------------------------------------------------------
    def start(self) -> Control:
        control = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                if path == "/clock":
                    self._reply(200, {"ts": time.time()})
                elif path == "/step":
                    self._reply(200, control.current())
                else:
                    self._reply(404, {"error": f"no {path}"})

            def do_PUT(self) -> None:
                q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status, reply = control.store(q, body)
                self._reply(status, reply)

            def do_POST(self) -> None:
                q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                status, reply = control.finish(q)
                self._reply(status, reply)

        self._server = ThreadingHTTPServer((self.bind_host, self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="remote-control", daemon=True).start()
        return self

    def stop(self) -> None:
        with self._lock:
            self._done, self._step = True, None
            self._lock.notify_all()
        if self._server is not None:
            # a moment for polling workers to see "done" and exit on their own
            time.sleep(0.5)
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def announce(self, step: str, records_dir: Path) -> None:
        with self._lock:
            self._step, self._records_dir = step, Path(records_dir)
            self._finished.setdefault(step, {})
            self._files.setdefault(step, {})
            self._lock.notify_all()

    def close_step(self) -> None:
        with self._lock:
            self._step = None

    def wait_finished(self, step: str, n: int, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Worker reports of `step` once `n` workers said done, or whatever arrived by the timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self._finished.get(step, {})) < n and time.monotonic() < deadline:
                self._lock.wait(timeout=0.2)
            return {w: dict(r) for w, r in self._finished.get(step, {}).items()}

    # HTTP side ----------------------------------------------------------------------------------------
    def current(self) -> dict[str, Any]:
        with self._lock:
            return {"step": self._step, "done": self._done}

    def store(self, q: Mapping[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        name, worker, step = q.get("file", ""), q.get("worker", ""), q.get("step", "")
        if not _FILE.match(name) or not _WORKER.match(worker):
            return 400, {"error": "bad file or worker name"}
        if hashlib.sha256(body).hexdigest() != q.get("sha256"):
            return 400, {"error": "sha256 mismatch: upload damaged, send it again"}
        with self._lock:
            if step != self._step or self._records_dir is None:
                return 409, {"error": f"step {step!r} is not the current step"}
            dest = self._records_dir / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{name}.{worker}.tmp")
            tmp.write_bytes(body)
            tmp.replace(dest)  # atomic; the same file again replaces, never appends
            rows = max(0, body.count(b"\n") - 1)
            self._files[step][name] = {"worker": worker, "bytes": len(body), "sha256": q["sha256"]}
        return 200, {"stored": name, "bytes": len(body), "lines": rows}

    def finish(self, q: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        worker, step = q.get("worker", ""), q.get("step", "")
        if not _WORKER.match(worker):
            return 400, {"error": "bad worker name"}

        def num(key: str) -> float:
            try:
                return float(q.get(key, "nan"))
            except ValueError:
                return math.nan

        with self._lock:
            if step not in self._finished:
                return 409, {"error": f"unknown step {step!r}"}
            files = sorted(n for n, m in self._files.get(step, {}).items() if m["worker"] == worker)
            self._finished[step][worker] = {
                "worker": worker,
                "host": q.get("host", ""),
                "clock_offset_s": num("clock_offset_s"),
                "clock_rtt_s": num("rtt_s"),
                "locust_returncode": int(num("rc")) if not math.isnan(num("rc")) else None,
                "files_announced": int(num("files")) if not math.isnan(num("files")) else None,
                "files": files,
            }
            self._lock.notify_all()
        return 200, {"ok": True}


class RemoteLocust:
    """A `locust_fn` (the runner's Locust launcher signature) that runs each step's Locust master here and
    its users on `workers` remote `expert-router loadgen worker` processes."""

    def __init__(
        self,
        workers: int,
        master_port: int,
        *,
        bind_host: str = "0.0.0.0",
        advertise_host: str | None = None,
        wait_workers_s: float = 300.0,
        upload_timeout_s: float = 120.0,
        echo: Any = None,
    ) -> None:
        if workers < 1:
            raise ValueError("--remote-workers must be >= 1")
        self.workers = workers
        self.master_port = master_port
        self.bind_host = bind_host
        self.advertise_host = advertise_host or _default_host(bind_host)
        self.wait_workers_s = wait_workers_s
        self.upload_timeout_s = upload_timeout_s
        self.echo = echo or (lambda s: None)
        self.control = Control(bind_host, master_port + CONTROL_PORT_OFFSET)
        self._n = 0

    @property
    def worker_command(self) -> str:
        return f"expert-router loadgen worker --master {self.advertise_host}:{self.master_port}"

    def start(self) -> RemoteLocust:
        self.control.start()
        self.echo(
            f"waiting for {self.workers} remote Locust worker(s) per step; start each with:\n"
            f"  {self.worker_command}"
        )
        return self

    def stop(self) -> None:
        self.control.stop()

    def __enter__(self) -> RemoteLocust:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __call__(
        self,
        host: str,
        users: int,
        spawn_rate: float,
        run_time_s: float | None,
        records_dir: str | Path,
        *,
        workload: str = "synthetic",
        shape: str | None = None,
        processes: int = 1,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        open_loop: Any = None,
    ) -> Any:
        from system.runner.locust import GRACE_S, LocustResult, build_command, run_process

        if open_loop is not None:
            raise ValueError("open-loop (rate) steps are not supported with --remote-workers yet")
        records = Path(records_dir).resolve()
        records.mkdir(parents=True, exist_ok=True)
        log = Path(log_path) if log_path is not None else records.parent / "locust.log"
        json_prefix = log.with_name(log.stem + "-stats")
        # relative: forwarded to the workers, resolved in each worker's own directory
        cmd = build_command(
            host,
            users,
            spawn_rate,
            run_time_s,
            Path("records"),
            workload=workload,
            shape=shape,
            processes=1,
            extra_args=extra_args,
            json_prefix=json_prefix.resolve(),
        )
        cmd += ["--master", "--master-bind-host", self.bind_host, "--master-bind-port", str(self.master_port)]
        cmd += ["--expect-workers", str(self.workers)]
        cmd += ["--expect-workers-max-wait", str(max(1, math.ceil(self.wait_workers_s)))]
        self._n += 1
        step = f"{self._n}-{records.parent.parent.name}-{records.parent.name}"
        self.control.announce(step, records)
        limit = (run_time_s or 0.0) + self.wait_workers_s + GRACE_S if timeout_s is None else timeout_s
        try:
            rc, timed_out, _pid = run_process(cmd, log, env, limit, cwd=records.parent)
        except BaseException:
            self.control.close_step()
            raise
        reports = self.control.wait_finished(step, self.workers, self.upload_timeout_s)
        self.control.close_step()
        summary = {
            "expected_workers": self.workers,
            "workers": list(reports.values()),
            "missing_workers": max(0, self.workers - len(reports)),
            "master_port": self.master_port,
        }
        (records.parent / "remote_workers.json").write_text(json.dumps(summary, indent=2) + "\n")
        for r in reports.values():
            self.echo(
                f"  worker {r['worker']} ({r['host']}): clock offset {r['clock_offset_s'] * 1000:+.1f} ms "
                f"(rtt {r['clock_rtt_s'] * 1000:.1f} ms), {len(r['files'])} record file(s)"
            )
        if len(reports) < self.workers:
            rc = rc if rc not in (0, 1) else 3  # fail the step: records of a worker are missing
        return LocustResult.collect(rc, timed_out, records, log, cmd, json_prefix)


def _default_host(bind_host: str) -> str:
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    import socket

    return socket.getfqdn()
