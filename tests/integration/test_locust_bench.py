"""`expert-router bench accuracy|soak` end to end at toy size: the JSON carries the contract keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "system.cli", "bench"]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_bench_accuracy_reports_error_percentiles_per_user_count(tmp_path: Path) -> None:
    out = tmp_path / "accuracy.json"
    p = _run(["accuracy", "--users", "1,4", "--seconds", "3", "--max-tokens", "8", "--out", str(out)], 120)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    for n in (1, 4):
        assert r[f"requests_{n}"] > 0 and r[f"errors_{n}"] == 0
        assert r[f"requests_{n}"] == r[f"locust_requests_{n}"]
        # the client reads the first token after the sim said it was due, and not much later
        assert 0 <= r[f"ttft_error_p50_ms_{n}"] <= r[f"ttft_error_p99_ms_{n}"] < 200
        assert r[f"e2e_error_p99_ms_{n}"] is not None and r[f"client_cpu_max_percent_{n}"] >= 0
        # the split: the client's share is today's key; the whole error adds the send -> arrival path,
        # which is positive for every request, so its percentiles are at least the client share's
        assert r[f"client_ttft_error_p99_ms_{n}"] == r[f"ttft_error_p99_ms_{n}"]
        assert r[f"send_to_arrival_p50_ms_{n}"] > 0
        assert r[f"harness_ttft_error_p50_ms_{n}"] >= r[f"client_ttft_error_p50_ms_{n}"]
    assert r["client_ttft_error_scope"].startswith("via gateway")
    assert r["machine"]["cpus"] >= 1 and r["settings"]["users"] == [1, 4]
    assert "| 4 | 1 |" in p.stdout  # the markdown table


def test_bench_accuracy_rejects_bad_users(tmp_path: Path) -> None:
    p = _run(["accuracy", "--users", "10,x", "--out", str(tmp_path / "a.json")], 60)
    assert p.returncode == 2 and "--users must be comma-separated integers" in p.stderr


@pytest.mark.slow
def test_bench_soak_reports_errors_memory_and_drift(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    p = _run(["soak", "--minutes", "0.2", "--users", "10", "--max-tokens", "8", "--out", str(out)], 120)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == 0 and r["requests"] > 10 and r["requests"] == r["locust_requests"]
    assert 10 < r["rss_start_mb"] < 2000 and 10 < r["rss_end_mb"] < 2000
    assert r["fds_start"] > 0 and r["fds_end"] > 0 and r["gateway_alive_at_end"]
    assert len(r["ttft_p99_ms_per_minute"]) == 1 and r["ttft_p99_ms_per_minute"][0] > 0
