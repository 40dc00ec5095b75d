"""Locust at scale-out: `--processes 2` and an explicit master + 2 workers merge their records exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from system.processes import free_port
from system.records import read_records, record_files
from system.runner.locust import build_command, locustfile_path, run_locust
from tests.integration.fakes import fake_server, host_of


def _assert_merged_exactly(records_dir: Path, locust_requests: int, workers: int) -> None:
    files = record_files(records_dir)
    assert len(files) == workers  # one file per worker process, none from the master
    df = read_records(files)
    assert len(df) > 0
    assert df["request_id"].is_unique  # no duplication across workers
    # requests still streaming when the run ended are recorded as `cut` (no Locust event); the rest are
    # exactly what Locust counted: no loss
    cut = df[df["outcome"] == "cut"]
    assert (cut["error"] == "cut: step ended").all() and not cut["success"].any()
    df = df[df["outcome"] != "cut"]
    assert len(df) == locust_requests
    assert df["worker_id"].nunique() == workers
    assert df.groupby("worker_id")["user_id"].nunique().min() >= 1
    assert df["success"].all()


def test_processes_2_records_merge_without_loss_or_duplication(tmp_path: Path) -> None:
    with fake_server(tmp_path, "--ttft-ms", "20", "--itl-ms", "2", "--router-headers") as srv:
        res = run_locust(
            host_of(srv), 10, 10, 6, tmp_path / "records", processes=2, extra_args=["--max-tokens", "16"]
        )
    assert res.returncode == 0, res.log_tail()
    n, fails = res.locust_count("E2E")
    assert fails == 0
    _assert_merged_exactly(tmp_path / "records", n, workers=2)


def test_master_and_two_workers_get_options_from_the_master(tmp_path: Path) -> None:
    records = tmp_path / "records"
    port = free_port()
    with fake_server(tmp_path, "--ttft-ms", "20", "--itl-ms", "2") as srv:
        master_cmd = build_command(
            host_of(srv),
            6,
            6,
            6,
            records,
            json_prefix=tmp_path / "stats",
            extra_args=["--master", "--master-bind-port", str(port), "--expect-workers", "2"],
        )
        master_cmd += ["--max-tokens", "8"]
        # workers carry no custom options: records dir, workload and max tokens come from the master
        worker_cmd = [sys.executable, "-m", "locust", "-f", str(locustfile_path()), "--worker"]
        worker_cmd += ["--master-port", str(port)]
        logs = [open(tmp_path / f"{n}.log", "wb") for n in ("master", "w1", "w2")]  # noqa: SIM115
        try:
            master = subprocess.Popen(master_cmd, stdout=logs[0], stderr=subprocess.STDOUT)
            workers = [subprocess.Popen(worker_cmd, stdout=fh, stderr=subprocess.STDOUT) for fh in logs[1:]]
            rc = master.wait(timeout=90)
            for w in workers:
                w.wait(timeout=30)
        finally:
            for p in [master, *workers]:
                if p.poll() is None:
                    p.kill()
            for fh in logs:
                fh.close()
    assert rc == 0, (tmp_path / "master.log").read_text()[-3000:]
    stats = json.loads((tmp_path / "stats.json").read_text())
    e2e = next(s for s in stats if s["name"] == "E2E")
    _assert_merged_exactly(records, int(e2e["num_requests"]), workers=2)
    df = read_records(record_files(records))
    assert (df[df["outcome"] != "cut"]["output_tokens"] == 8).all()  # cut: still streaming at the end
