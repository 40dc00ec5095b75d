"""analysis.load on the committed fixture: tidy keys, complete steps only, run vs experiment dirs."""

from __future__ import annotations

import filecmp
import json
import shutil
from pathlib import Path

import pytest

from analysis.load import (
    NoCompleteStepsError,
    find_run_dirs,
    load_all,
    load_configs,
    load_gpu,
    load_metrics,
    load_procs,
    load_runs,
    load_steps,
)
from analysis.metrics import slos_from_manifest, summarize
from tests.fixtures import make_fixture as fx

FIXTURE_EXP = Path(__file__).resolve().parents[1] / "fixtures" / "results" / fx.EXPERIMENT
FIXTURE_RUN = FIXTURE_EXP / fx.RUN_ID


def test_committed_fixture_matches_its_generator(tmp_path) -> None:
    built = fx.build(tmp_path)
    cmp = filecmp.dircmp(built, FIXTURE_RUN)
    stack = [cmp]
    while stack:
        c = stack.pop()
        assert not (c.left_only or c.right_only or c.diff_files), (
            f"{c.left}: rerun tests/fixtures/make_fixture.py"
        )
        # dircmp compares shallowly (size + mtime); compare the bytes
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors, mismatch + errors
        stack.extend(c.subdirs.values())


def test_load_runs_tidy_keys_and_complete_steps_only() -> None:
    df = load_runs(FIXTURE_RUN)
    assert list(df.columns[:5]) == ["run_id", "config", "topology", "users", "rep"]
    assert {"ttft_s", "itl_s", "expert", "in_window", "source_file"} <= set(df.columns)
    assert set(df["run_id"]) == {"run-1"}
    assert sorted(df.groupby(["config", "users", "rep"]).size().index.tolist()) == [
        ("routed", 1, 0), ("routed", 10, 0), ("routed", 10, 1), ("routed", 50, 0),
        ("single", 1, 0), ("single", 10, 0), ("single", 50, 0),
    ]  # fmt: skip
    complete = [s for s in fx.PLAN if s.get("status", "ok") == "ok"]
    # per step: ok + failed + 2 warm-up + 1 late records; only ok + failed are in the window
    assert len(df) == sum(s["ok"] + s["failed"] + 3 for s in complete)
    assert int(df["in_window"].sum()) == sum(s["ok"] + s["failed"] for s in complete)
    everything = load_runs(FIXTURE_RUN, complete_only=False)
    assert set(everything["rep"]) == {0, 1} and len(everything) == len(df) + 10 + 3


def test_experiment_dir_reads_all_runs(tmp_path) -> None:
    exp = tmp_path / "fixture"
    shutil.copytree(FIXTURE_RUN, exp / "run-1")
    shutil.copytree(FIXTURE_RUN, exp / "run-2")
    assert [p.name for p in find_run_dirs(exp)] == ["run-1", "run-2"]
    df = load_runs(exp)
    assert set(df["run_id"]) == {"run-1", "run-2"}
    assert len(df) == 2 * len(load_runs(FIXTURE_RUN))
    # two identical runs: same rates, twice the requests
    data = load_all(exp)
    s = summarize(data.records, data.steps, slos_from_manifest(data.manifest)).set_index(["config", "users"])
    assert s.loc[("routed", 50), "throughput_rps"] == pytest.approx(4.0)
    assert s.loc[("routed", 50), "requests"] == 80


def test_steps_and_telemetry_tables() -> None:
    steps = load_steps(FIXTURE_RUN)
    assert len(steps) == 7 and set(steps["status"]) == {"ok"}
    assert (steps["window_s"] == fx.WINDOW_S).all()
    assert (steps["window_start"] == steps["start_ts"] + fx.WARMUP_S).all()
    gpu = load_gpu(FIXTURE_RUN)
    assert {"ts", "gpu", "util_pct", "mem_used_mb", "in_window", "config", "users"} <= set(gpu.columns)
    assert gpu.groupby("config")["gpu"].nunique().to_dict() == {"routed": 4, "single": 2}
    metrics = load_metrics(FIXTURE_RUN)
    assert "vllm:num_requests_running" in set(metrics["metric"])
    assert json.loads(metrics.loc[metrics["metric"] == "vllm:kv_cache_usage_perc", "labels"].iloc[0]) == {
        "model_name": "sim"
    }
    assert set(load_procs(FIXTURE_RUN)["name"]) >= {"gateway", "single-0"}
    assert [e["name"] for e in load_configs(FIXTURE_RUN)["routed"]["experts"]] == [
        f"expert-{k}" for k in range(4)
    ]


def test_no_complete_steps_and_missing_dirs_are_clear_errors(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    shutil.copytree(FIXTURE_RUN / "single" / "users=50" / "rep=1", run / "single" / "users=50" / "rep=1")
    with pytest.raises(NoCompleteStepsError, match="no complete steps"):
        load_all(run)
    assert len(load_steps(run, complete_only=False)) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoCompleteStepsError, match="not a results dir"):
        load_all(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load_runs(tmp_path / "absent")


def test_fixture_summary_has_the_planned_values() -> None:
    data = load_all(FIXTURE_RUN)
    s = summarize(
        data.records, data.steps, slos_from_manifest(data.manifest), gpu=data.gpu, configs=data.configs
    )
    s = s.set_index(["config", "users"])
    for step in fx.PLAN:
        if step.get("status", "ok") != "ok" or (step["config"], step["users"]) == ("routed", 10):
            continue  # routed@10 has two repetitions, checked below
        row = s.loc[(step["config"], step["users"])]
        lo, hi = step["ttft"]
        assert row["throughput_rps"] == pytest.approx(step["ok"] / fx.WINDOW_S)
        assert row["output_tps"] == pytest.approx(step["ok"] * fx.OUTPUT_TOKENS / fx.WINDOW_S)
        assert row["ttft_p50_ms"] == pytest.approx(1000 * (lo + (hi - lo) * 0.5))
        assert row["ttft_p99_ms"] == pytest.approx(1000 * (lo + (hi - lo) * 0.99))
        assert row["tpot_p50_ms"] == pytest.approx(1000 * step["tpot"])
        assert row["error_rate"] == pytest.approx(step["failed"] / (step["ok"] + step["failed"]))
        assert row["gpu_util_pct"] == pytest.approx(step["util"])
    assert s.loc[("routed", 10), "throughput_rps"] == pytest.approx((20 + 24) / 2 / fx.WINDOW_S)
    assert s.loc[("routed", 50), "goodput_rps"] == pytest.approx(2.5)  # i <= 24 of 40 meet TTFT <= 450 ms
    assert s.loc[("single", 50), "goodput_rps"] == 0.0  # TPOT 60 ms > 50 ms SLO
    assert s.loc[("routed", 50), "expert_max_share"] == pytest.approx(0.4)
    assert s.loc[("routed", 50), "gpu_mem_used_gib"] == pytest.approx(4 * 20_000 / 1024)
