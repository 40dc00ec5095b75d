"""Locust against the real stack: gateway + 2 simulators (consistent records), and a sim killed mid-run."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from system.bench._sims import sim_stack
from system.records import read_records
from system.runner.locust import run_locust


@pytest.mark.slow
def test_20_users_through_gateway_and_two_sims_give_consistent_records(tmp_path: Path) -> None:
    with sim_stack(tmp_path / "stack") as stack:
        assert stack.gateway_url is not None
        res = run_locust(
            stack.gateway_url, 20, 20, 15, tmp_path / "records", extra_args=["--max-tokens", "48"]
        )
    assert res.returncode == 0, res.log_tail()
    df = read_records(res.record_paths)
    # the 20 users were mid-stream when the run ended: each has a `cut` record with what it received
    cut = df[df["outcome"] == "cut"]
    assert 0 < len(cut) <= 20 and cut["user_id"].is_unique
    assert (cut["error"] == "cut: step ended").all() and (cut["end_ts"] >= cut["start_ts"]).all()
    got = cut[cut["ttft_s"].notna()]
    assert (got["chunk_tokens"].map(sum) == got["output_tokens"]).all()
    df = df[df["outcome"] == "ok"]
    n, fails = res.locust_count("E2E")
    assert len(df) == n and fails == 0 and n >= 40
    assert df["request_id"].is_unique and df["success"].all() and (df["status"] == 200).all()
    assert (df["ttft_s"] > 0).all() and (df["ttft_s"] <= df["e2e_s"]).all()
    assert (df["output_tokens"] > 0).all() and (df["prompt_tokens"] > 0).all()
    assert df["tokens_from_usage"].all() and (df["output_tokens"] <= 48).all()
    assert set(df["expert"]) == {"sim0", "sim1"}  # the gateway's x-router-expert, round robin
    assert (df["policy"] == "round_robin").all() and df["gateway_overhead_ms"].notna().all()
    assert df["user_id"].nunique() == 20
    # the sims' ground truth came through the gateway, and the client saw each token after it was due
    assert (df["gt_output_tokens"] == df["output_tokens"]).all()
    err = df["start_ts"] + df["ttft_s"] - df["gt_first_token_ts"]
    assert (err > -0.002).all() and err.median() < 0.05, err.describe()
    assert df["itl_s"].map(len).eq(df["output_tokens"] - 1).all()  # stream interval 1: a chunk per token
    assert df["chunk_tokens"].map(lambda c: c == [1] * len(c)).all()  # one token per chunk, exactly
    assert (df["tpot_s"] > 0).all()
    assert df["client_cpu_percent"].notna().mean() > 0.5


def test_sim_killed_mid_run_records_failures(tmp_path: Path) -> None:
    with sim_stack(tmp_path / "stack", n_sims=1, gateway=False) as stack:
        sim = stack.sims[0]
        killed_at: list[float] = []

        def kill_later() -> None:
            time.sleep(4.5)
            killed_at.append(time.time())
            sim.kill()

        killer = threading.Thread(target=kill_later)
        killer.start()
        try:
            res = run_locust(stack.target, 8, 8, 7, tmp_path / "records", extra_args=["--max-tokens", "60"])
        finally:
            killer.join()
    df = read_records(res.record_paths)
    df = df[df["outcome"] != "cut"]
    ok, failed = df[df["success"]], df[~df["success"]]
    assert len(failed) > 0 and len(ok) > 0, res.log_tail()
    assert (ok["end_ts"] <= killed_at[0] + 0.5).all()
    assert failed["error"].str.len().gt(0).all()
    assert (failed["start_ts"] >= killed_at[0] - 10).all()
    # requests streaming when it died, then requests that found nobody listening
    assert failed["error"].str.contains("stream interrupted|without \\[DONE\\]", regex=True).any()
    assert failed["error"].str.contains("refused", case=False).any()
    assert res.locust_count("E2E") == (len(df), len(failed))
    assert df["model"].iloc[0] == "sim0"  # 'auto' resolved through the sim's /v1/models
