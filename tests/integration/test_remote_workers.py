"""Locust workers on "other hosts" over TCP on loopback: a master per step in the runner, two long-lived
`expert-router loadgen worker` processes reconnecting step to step, every record merged exactly once."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from system.processes import ServerProcess, free_port
from system.records import read_records, record_files

ROOT = Path(__file__).resolve().parents[2]


def port_pair() -> int:
    """A port P with P and P + 1 free now (master and control endpoint)."""
    for _ in range(50):
        p = free_port()
        with contextlib.suppress(OSError), socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", p))
            b.bind(("127.0.0.1", p + 1))
            return p
    raise RuntimeError("no free port pair")


@pytest.mark.slow
def test_two_remote_workers_serve_every_step_and_records_merge_exactly(tmp_path: Path) -> None:
    port = port_pair()
    exp = {
        "name": "remote-mini",
        "workload": {"kind": "synthetic", "n": 100, "prompt_tokens": 20, "output_tokens": 8},
        "users": [2, 4],
        "step_duration_s": 4,
        "warmup_s": 0.5,
        "cooldown_s": 0,
        "locust": {"extra_args": ["--max-tokens", "8"]},
        "configurations": [
            {
                "name": "single",
                "topology": "single",
                "via_gateway": False,
                "experts": [{"name": "big", "engine": {"kind": "sim", "profile": "debug"}}],
            }
        ],
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    run = tmp_path / "run"
    workers = [
        ServerProcess(
            [
                *(sys.executable, "-m", "system.cli", "loadgen", "worker"),
                *("--master", f"127.0.0.1:{port}", "--max-idle-s", "120"),
                *("--work-dir", str(tmp_path / f"w{i}")),
            ],
            name=f"worker{i}",
            health_url=None,
            log_path=tmp_path / f"worker{i}.log",
        )
        for i in range(2)
    ]
    with contextlib.ExitStack() as es:
        for w in workers:
            es.enter_context(w)
        r = subprocess.run(
            [
                *(sys.executable, "-m", "system.cli", "experiment", "run", str(path), "--out", str(run)),
                *("--no-progress", "--remote-workers", "2", "--master-port", str(port)),
                *("--master-bind-host", "127.0.0.1"),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=280,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"expert-router loadgen worker --master 127.0.0.1:{port}" in r.stderr  # printed for the user
        # the run is over: both workers see "done" and leave on their own
        deadline = time.monotonic() + 30
        while any(w.alive() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(w.alive() for w in workers)
    for i in range(2):
        assert "served 2 step(s)" in (tmp_path / f"worker{i}.log").read_text()

    for users in (2, 4):
        step_dir = run / "single" / f"users={users}" / "rep=0"
        step = json.loads((step_dir / "step.json").read_text())
        assert step["status"] == "ok", step.get("message")
        remote = json.loads((step_dir / "remote_workers.json").read_text())
        assert remote["missing_workers"] == 0 and len(remote["workers"]) == 2
        assert len({w["worker"] for w in remote["workers"]}) == 2
        for w in remote["workers"]:
            # stated per worker; on one host the offset is tiny but its exact value is the clock's business
            assert math.isfinite(w["clock_offset_s"]) and w["clock_rtt_s"] >= 0
            assert w["files"] and w["files_announced"] == len(w["files"])
        df = read_records(record_files(step_dir / "records"))
        assert len(df) > 0 and not df["request_id"].duplicated().any()
        assert df["worker_id"].nunique() == 2  # users were spread over both workers
        # no loss: every request Locust's master counted (E2E, aggregated from the workers) has a record
        stats = json.loads((step_dir / "locust-stats.json").read_text())
        e2e = next(e for e in stats if e.get("name") == "E2E")
        outcome = df["outcome"] if "outcome" in df else df["success"].map({True: "ok", False: "error"})
        assert int((outcome != "cut").sum()) == int(e2e["num_requests"])
