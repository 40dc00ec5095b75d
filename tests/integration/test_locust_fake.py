"""Locust scenario against the fake OpenAI server (known timing): TTFT is the first content byte, errors.

Locust runs only in subprocesses (system.runner.locust.run_locust); pytest never imports it.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest

from system.records import read_records
from system.runner.locust import run_locust
from tests.integration.fakes import fake_server, host_of


def test_ttft_is_the_first_content_byte_not_the_headers(tmp_path: Path) -> None:
    # headers and a role-only chunk go out at once; the first token only 300 ms after arrival
    with fake_server(tmp_path, "--ttft-ms", "300", "--itl-ms", "2") as srv:
        res = run_locust(host_of(srv), 4, 4, 5, tmp_path / "records", extra_args=["--max-tokens", "8"])
    assert res.returncode == 0, res.log_tail()
    df = read_records(res.record_paths)
    df = df[df["outcome"] != "cut"]  # still streaming when the run ended
    assert len(df) >= 8
    assert df["success"].all()
    assert (df["ttft_s"] >= 0.300).all()  # never the headers' or the role chunk's time
    assert df["ttft_s"].median() < 0.330
    # against the server's own due time for the first token (same clock): a few ms at most
    err_ms = (df["start_ts"] + df["ttft_s"] - df["gt_first_token_ts"]) * 1000
    assert err_ms.median() < 15, err_ms.describe()
    assert (df["e2e_s"] >= df["ttft_s"]).all()
    assert df["itl_s"].map(len).eq(df["output_tokens"] - 1).all()
    # chunk timing, relative so that load on the machine cannot flake it: the server sleeps 2 ms between
    # tokens (longer when busy), so a client timing chunks as they arrive sees each request's tokens spread
    # over about (n - 1) x 2 ms or more; reading in buffered blocks would squash that to ~0. And the chunks
    # can never spread wider than the request's own first-token-to-end span.
    span = df["itl_s"].map(sum)
    assert (span / ((df["output_tokens"] - 1) * 0.002)).median() > 0.5, span.describe()
    assert (span <= df["e2e_s"] - df["ttft_s"] + 1e-6).all()


def test_http_errors_record_the_error_message_and_completions_endpoint(tmp_path: Path) -> None:
    with fake_server(tmp_path, "--ttft-ms", "20", "--itl-ms", "1", "--fail-every", "3") as srv:
        res = run_locust(
            host_of(srv),
            3,
            3,
            4,
            tmp_path / "records",
            extra_args=["--max-tokens", "4", "--endpoint", "completions", "--model", "fake-model"],
        )
    assert res.returncode == 1, res.log_tail()  # Locust's exit code when some requests failed
    df = read_records(res.record_paths)
    df = df[df["outcome"] != "cut"]
    failed, ok = df[~df["success"]], df[df["success"]]
    assert len(failed) > 0 and len(ok) > 0
    assert (failed["status"] == 503).all()
    assert failed["error"].str.contains("fake overload: try again later").all()
    assert (ok["endpoint"] == "/v1/completions").all() and (ok["output_tokens"] == 4).all()
    assert ok["model"].eq("fake-model").all()
    assert res.locust_count("E2E") == (len(df), len(failed))


def test_server_killed_mid_run_records_failures_with_error_text(tmp_path: Path) -> None:
    srv = fake_server(tmp_path, "--ttft-ms", "20", "--itl-ms", "20", "--router-headers").start()
    killed_at: list[float] = []

    def kill_later() -> None:
        time.sleep(5.0)
        killed_at.append(time.time())
        srv.kill()

    killer = threading.Thread(target=kill_later)
    killer.start()
    try:
        res = run_locust(host_of(srv), 5, 5, 8, tmp_path / "records", extra_args=["--max-tokens", "40"])
    finally:
        killer.join()
        srv.stop()
    df = read_records(res.record_paths)
    df = df[df["outcome"] != "cut"]
    ok, failed = df[df["success"]], df[~df["success"]]
    assert len(ok) > 0 and len(failed) > 0, res.log_tail()
    assert (ok["end_ts"] <= killed_at[0] + 0.5).all()
    assert failed["error"].str.len().gt(0).all()
    # streams cut mid-way (status 200, partial tokens) and refused connections (no response: status 0)
    assert (failed["status"] == 0).any()
    assert failed["error"].str.contains("Connection refused|ECONNREFUSED|refused", regex=True).any()
    assert res.locust_count("E2E") == (len(df), len(failed))


def test_bad_option_fails_fast_with_a_clear_message(tmp_path: Path) -> None:
    res = run_locust(
        "http://127.0.0.1:9",
        1,
        1,
        3,
        tmp_path / "records",
        extra_args=["--max-tokens", "0"],
        timeout_s=60,
    )
    assert res.returncode == 2
    assert "--max-tokens must be >= 1" in res.log_tail()


@pytest.mark.parametrize("shape", ["steps"])
def test_steps_shape_ramps_and_stops_by_itself(tmp_path: Path, shape: str) -> None:
    with fake_server(tmp_path, "--ttft-ms", "10", "--itl-ms", "1") as srv:
        t0 = time.monotonic()
        res = run_locust(
            host_of(srv),
            1,
            1,
            None,
            tmp_path / "records",
            shape=shape,
            extra_args=["--steps", "2,5", "--step-seconds", "3", "--max-tokens", "4"],
            timeout_s=60,
        )
        took = time.monotonic() - t0
    assert res.returncode == 0, res.log_tail()
    assert took < 30
    df = read_records(res.record_paths)
    assert df["user_id"].nunique() == 5
    first = df["start_ts"].min()
    early = df[df["start_ts"] < first + 2.5]
    assert early["user_id"].nunique() <= 2  # first step: 2 users
    assert not math.isnan(df["ttft_s"].max())


def test_servers_without_done_or_usage_succeed_and_count_chunks(tmp_path: Path) -> None:
    # transformers serve ends the body after the finish_reason chunk and ignores include_usage
    with fake_server(tmp_path, "--ttft-ms", "20", "--itl-ms", "2", "--no-done-no-usage") as srv:
        res = run_locust(host_of(srv), 2, 2, 4, tmp_path / "records", extra_args=["--max-tokens", "7"])
    assert res.returncode == 0, res.log_tail()
    df = read_records(res.record_paths)
    df = df[df["outcome"] != "cut"]
    assert len(df) >= 4
    assert df["success"].all(), df["error"].unique()
    assert (df["output_tokens"] == 7).all() and not df["tokens_from_usage"].any()
    assert (df["e2e_s"] > df["ttft_s"]).all()
