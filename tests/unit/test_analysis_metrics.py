"""analysis.metrics on hand-made records with known answers: windows, percentiles, goodput, balance."""

from __future__ import annotations

import math

import pytest

from analysis.load import load_all, load_runs, load_steps
from analysis.metrics import (
    expert_balance,
    latency_stats,
    meets_slos,
    normalize_slos,
    percentile,
    slos_from_manifest,
    summarize,
)
from tests.fixtures.minirun import fail, rec, write_config, write_manifest, write_step


def _summary(run_dir, slos=None):
    data = load_all(run_dir)
    slo = slos if slos is not None else slos_from_manifest(data.manifest)
    return summarize(data.records, data.steps, slo, gpu=data.gpu, metrics=data.metrics, configs=data.configs)


def test_percentile_is_numpy_linear_and_ignores_nan() -> None:
    v = [0.4, 0.1, float("nan"), 1.0, 0.3, 0.2]
    assert percentile(v, 50) == pytest.approx(0.3)
    assert percentile(v, 90) == pytest.approx(0.76)  # rank 3.6 between 0.4 and 1.0
    assert percentile(v, 99) == pytest.approx(0.976)
    assert math.isnan(percentile([], 50))
    stats = latency_stats(v, "ttft")
    assert stats == pytest.approx(
        {"ttft_mean_ms": 400.0, "ttft_p50_ms": 300.0, "ttft_p90_ms": 760.0, "ttft_p99_ms": 976.0}
    )


def test_window_counts_completions_inside_start_plus_warmup_to_end(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    # window = [100 + 5, 120] = 15 s; boundaries are inside
    records = [
        rec(104.9, output_tokens=99),  # warm-up: out
        rec(105.0, output_tokens=10),
        rec(110.0, output_tokens=20),
        rec(119.9, output_tokens=30),
        rec(120.0, output_tokens=40),
        rec(120.1, output_tokens=99),  # after the window: out
        fail(111.0),
    ]
    write_step(run, "single", 4, 0, records)
    df = load_runs(run)
    assert df["in_window"].tolist() == [False, True, True, True, True, False, True]
    s = _summary(run).iloc[0]
    assert s["window_s"] == 15.0
    assert s["requests"] == 4 and s["failed"] == 1
    assert s["throughput_rps"] == pytest.approx(4 / 15)
    assert s["output_tps"] == pytest.approx(100 / 15)
    assert s["error_rate"] == pytest.approx(1 / 5)


def test_latency_percentiles_use_successful_window_requests_and_pool_chunk_gaps(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    records = [
        rec(110.0, ttft_s=0.1, e2e_s=0.13, output_tokens=4, itl_s=[0.01, 0.01, 0.01]),
        rec(111.0, ttft_s=0.3, e2e_s=0.4, output_tokens=2, itl_s=[0.1]),
        rec(104.0, ttft_s=9.0, e2e_s=9.5, itl_s=[5.0]),  # warm-up, ignored
        fail(112.0),
    ]
    write_step(run, "single", 2, 0, records)
    s = _summary(run).iloc[0]
    assert s["ttft_p50_ms"] == pytest.approx(200.0)
    assert s["ttft_p99_ms"] == pytest.approx(100 + 0.99 * 200)
    # TPOT per request: (0.13-0.1)/3 = 10 ms and (0.4-0.3)/1 = 100 ms
    assert s["tpot_p50_ms"] == pytest.approx(55.0)
    # vLLM bench pools every gap: [10, 10, 10, 100] ms -> median 10, mean 32.5 (not 55)
    assert s["chunk_gap_p50_ms"] == pytest.approx(10.0)
    assert s["chunk_gap_mean_ms"] == pytest.approx(32.5)
    assert s["e2e_p50_ms"] == pytest.approx(265.0)


def test_goodput_needs_every_slo_and_single_token_passes_tpot(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run, {"ttft_ms": 500, "tpot_ms": 50, "e2e_ms": None})
    records = [
        rec(106.0, ttft_s=0.4, tpot_s=0.04),  # meets both
        rec(107.0, ttft_s=0.6, tpot_s=0.04),  # TTFT too slow
        rec(108.0, ttft_s=0.4, tpot_s=0.06),  # TPOT too slow
        rec(109.0, ttft_s=0.5, tpot_s=float("nan"), output_tokens=1),  # one token: no TPOT, TTFT == limit
        fail(110.0),
    ]
    write_step(run, "single", 1, 0, records, start_ts=100.0, end_ts=115.0)
    s = _summary(run).iloc[0]
    assert s["goodput_rps"] == pytest.approx(2 / 10)
    assert s["throughput_rps"] == pytest.approx(4 / 10)
    assert math.isnan(_summary(run, slos={}).iloc[0]["goodput_rps"])


def test_slo_normalisation() -> None:
    norm = normalize_slos({"ttft_ms": 500, "tpot_s": 0.05, "e2el_ms": 2000})
    assert norm == {"ttft": 0.5, "tpot": 0.05, "e2e": 2.0}
    assert normalize_slos(norm) == norm  # idempotent: bare names are seconds
    assert normalize_slos({"e2e_ms": None}) == {}
    with pytest.raises(ValueError, match="unknown SLO"):
        normalize_slos({"latency_ms": 1})
    assert slos_from_manifest({"experiment": {"slos": {"ttft_ms": 100}}}) == {"ttft": 0.1}
    assert slos_from_manifest({}) == {}


def test_meets_slos_on_failed_requests_is_false(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_step(run, "single", 1, 0, [fail(110.0), rec(110.0, ttft_s=0.1)])
    df = load_runs(run)
    assert meets_slos(df, {"ttft": 1.0}).tolist() == [False, True]


def test_rates_are_averaged_over_repetitions(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    write_step(run, "single", 8, 0, [rec(106.0 + i * 0.1) for i in range(10)], start_ts=100, end_ts=115)
    write_step(run, "single", 8, 1, [rec(206.0 + i * 0.1) for i in range(20)], start_ts=200, end_ts=215)
    # an interrupted third repetition is not read at all
    write_step(
        run,
        "single",
        8,
        2,
        [rec(306.0 + i * 0.1) for i in range(90)],
        start_ts=300,
        end_ts=315,
        status="running",
    )
    assert len(load_steps(run)) == 2 and len(load_steps(run, complete_only=False)) == 3
    s = _summary(run).iloc[0]
    assert s["reps"] == 2
    assert s["requests"] == 30
    assert s["throughput_rps"] == pytest.approx(1.5)
    assert s["throughput_rps_std"] == pytest.approx(math.sqrt(0.5))


def test_expert_balance_counts_idle_experts_and_cv(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    write_config(run, "routed", "routed", ["a", "b", "c", "d"])
    experts = ["a"] * 6 + ["b"] * 2 + ["c"] * 2
    write_step(run, "routed", 3, 0, [rec(110.0 + i * 0.1, expert=e) for i, e in enumerate(experts)])
    data = load_all(run)
    bal = expert_balance(data.records, data.configs)
    assert bal.set_index("expert")["requests"].to_dict() == {"a": 6, "b": 2, "c": 2, "d": 0}
    assert bal.set_index("expert")["share"].to_dict() == pytest.approx(
        {"a": 0.6, "b": 0.2, "c": 0.2, "d": 0.0}
    )
    s = _summary(run).iloc[0]
    assert s["experts"] == 4
    assert s["expert_max_share"] == pytest.approx(0.6)
    assert s["expert_cv"] == pytest.approx(math.sqrt(4.75) / 2.5)  # population std of [6,2,2,0] / mean


def test_harness_error_and_gateway_overhead(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    records = []
    for i in range(5):
        r = rec(110.0 + i, ttft_s=0.5, e2e_s=1.0, gateway_overhead_ms=float(i + 1))
        r.gt_first_token_ts = r.start_ts + 0.5 - (i + 1) / 1000.0  # client saw it 1..5 ms late
        r.gt_last_token_ts = r.start_ts + 1.0 - 0.002
        records.append(r)
    records.append(rec(116.0, ttft_s=0.5))  # no ground truth (NaN): left out of the error statistics
    write_step(run, "routed", 5, 0, records)
    s = _summary(run).iloc[0]
    assert s["ttft_error_p50_ms"] == pytest.approx(3.0, abs=1e-3)
    assert s["ttft_error_p99_ms"] == pytest.approx(4.96, abs=1e-3)
    assert s["e2e_error_p50_ms"] == pytest.approx(2.0, abs=1e-3)
    assert s["gateway_overhead_p50_ms"] == pytest.approx(3.0)
    assert s["gateway_overhead_p99_ms"] == pytest.approx(4.96)


def test_gpu_means_use_window_samples_and_sum_memory_over_gpus(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    rows = ["101,0,0,100,1000,10,1,1", "101,1,0,100,1000,10,1,1"]  # warm-up sample: ignored
    rows += [
        f"{t},{g},{50 + 20 * g},{1024 * (g + 1)},81559,{100 + 50 * g},1,1" for t in (106, 110) for g in (0, 1)
    ]
    write_step(run, "single", 1, 0, [rec(110.0)], gpu_rows=rows)
    s = _summary(run).iloc[0]
    assert s["gpu_count"] == 2
    assert s["gpu_util_pct"] == pytest.approx(60.0)
    assert s["gpu_mem_used_gib"] == pytest.approx(3.0)
    assert s["gpu_power_w"] == pytest.approx(250.0)
    # no GPU (header-only gpu.csv, as the runner writes without NVML): NaN, not an error
    run2 = tmp_path / "exp" / "run2"
    write_step(run2, "single", 1, 0, [rec(110.0)])
    assert math.isnan(_summary(run2).iloc[0]["gpu_util_pct"])


def test_steps_without_records_give_zero_throughput_not_errors(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_step(run, "routed", 1, 0, [])
    write_step(run, "routed", 5, 0, [fail(110.0)])
    s = _summary(run).set_index("users")
    assert s.loc[1, "throughput_rps"] == 0.0 and math.isnan(s.loc[1, "error_rate"])
    assert s.loc[5, "error_rate"] == 1.0 and math.isnan(s.loc[5, "ttft_p50_ms"])
