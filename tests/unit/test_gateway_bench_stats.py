"""Verdicts of `bench gateway`: met / missed / inconclusive from repetitions, never from one run."""

from __future__ import annotations

import pytest

from system.bench._gateway_stats import (
    analyse,
    ci,
    judge_cpu_ratio,
    judge_lower,
    judge_ttft_ratio,
    judge_upper,
    verdicts,
)


def test_ci_is_a_t_interval_and_needs_two_values() -> None:
    c = ci([1.0, 2.0, 3.0])
    assert c["mean"] == 2.0 and c["lo"] == pytest.approx(2 - 4.3027 / 3**0.5, abs=1e-3)
    assert "lo" not in ci([5.0]) and ci([])["n"] == 0


def test_cpu_ratio_verdicts() -> None:
    assert judge_cpu_ratio([110, 112, 108], [100, 100, 100], 1.2)["verdict"] == "met"
    assert judge_cpu_ratio([150, 152, 148], [100, 100, 100], 1.2)["verdict"] == "missed"
    straddle = judge_cpu_ratio([100, 140, 120], [100, 100, 100], 1.2)
    assert straddle["verdict"] == "inconclusive" and straddle["lo"] < 1.2 < straddle["hi"]
    assert judge_cpu_ratio([110], [100], 1.2)["verdict"] == "inconclusive"  # one run is never enough


def test_ttft_margin_must_beat_the_drift() -> None:
    # ours 1.0 ms vs theirs 1.0 ms: margin +0.5 ms, tight CI
    assert judge_ttft_ratio([1.0, 1.0, 1.0], [1.0, 1.01, 0.99], 1.5, drift_ms=0.1)["verdict"] == "met"
    # the same margin inside a 2 ms drift: inconclusive
    assert judge_ttft_ratio([1.0, 1.0, 1.0], [1.0, 1.01, 0.99], 1.5, 2.0)["verdict"] == "inconclusive"
    assert judge_ttft_ratio([5.0, 5.1, 4.9], [1.0, 1.0, 1.0], 1.5, 0.1)["verdict"] == "missed"
    # a peer at or below zero makes the ratio meaningless, the margin still decides
    r = judge_ttft_ratio([-0.3, -0.31, -0.29], [-0.1, -0.1, -0.1], 1.5, 0.05)
    assert r["ratio_of_means"] is None and r["verdict"] == "met"


def test_bounds() -> None:
    assert judge_upper(ci([1.0, 2.0, 1.5]), 5.0) == "met"
    assert judge_upper(ci([6.0, 7.0, 6.5]), 5.0) == "missed"
    assert judge_lower(ci([0.995, 0.996, 0.997]), 0.99) == "met"
    assert judge_lower(ci([0.5, 1.5, 1.0]), 0.99) == "inconclusive"


def _run(arm: str, rep: int, p50: float, cpu: float | None = None) -> dict[str, object]:
    r: dict[str, object] = {
        "arm": arm,
        "users": 100,
        "rep": rep,
        "ttft_p50_ms": p50,
        "ttft_p99_ms": p50 + 5,
        "tokens_per_s": 1000.0,
        "errors": {},
    }
    if cpu is not None:
        r["cpu_us_per_request"] = cpu
    return r


def test_analyse_pairs_each_arm_with_its_repetitions_direct_runs() -> None:
    runs = []
    for rep, (d0, d1) in enumerate([(50.0, 50.2), (51.0, 50.8), (50.5, 50.5)]):
        runs += [_run("direct", rep, d0), _run("direct", rep, d1)]
        runs += [_run("gateway", rep, (d0 + d1) / 2 + 1.0, 1000 + rep)]
        runs += [_run("vllm_router", rep, (d0 + d1) / 2 + 1.0, 1000.0)]
        runs += [_run("gateway_aiohttp", rep, (d0 + d1) / 2 + 3.0, 1600.0)]
    a = analyse(runs, [100], ["gateway", "vllm_router", "gateway_aiohttp"], 3)
    lvl = a["levels"]["100"]
    assert lvl["arms"]["gateway"]["added_ttft_p50_ms"]["values"] == [1.0, 1.0, 1.0]
    assert lvl["drift_p50_ms"]["mean"] == pytest.approx(0.4 / 3, abs=1e-3)
    assert (
        a["flat"]["added_ttft_p50_ms_100"] == 1.0 and a["flat"]["opt_aiohttp_cpu_us_per_request_100"] == 1600
    )
    v = verdicts(a, [100], ["gateway", "vllm_router", "gateway_aiohttp"])
    assert v["cpu_per_request_le_1_2x_vllm_router_100"]["verdict"] == "met"
    assert v["cpu_per_request_le_1_0x_vllm_router_100_stretch"]["verdict"] == "inconclusive"  # 1.001 [.., ..]
    assert v["gateway_aiohttp_cpu_per_request_le_1_2x_vllm_router_100"]["verdict"] == "missed"
    assert v["added_ttft_p50_le_1_5x_vllm_router_100"]["verdict"] == "met"  # margin 0.5 ms > drift 0.13
