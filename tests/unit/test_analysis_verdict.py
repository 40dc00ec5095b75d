"""Known answers for the verdict: windowed tok/s, engine counters, CIs, flags, saturation, crossover, "
"rates."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from analysis.flags import Thresholds, flags_for, usable
from analysis.load import load_all, load_steps
from analysis.stats import RepData, ci, diff_ci, distinguishable, percentile_ci, rate_ci
from analysis.summary import analyze_verdict, console_table, print_summary, summary_dict
from analysis.window import engine_tokens_in_window, tokens_in_window
from tests.fixtures.minirun import (
    fail,
    rec,
    stream,
    write_config,
    write_load_step,
    write_manifest,
    write_step,
)

# ---------------------------------------------------------------- windowed throughput


def _frame(records: list, extra: dict | None = None) -> pd.DataFrame:
    from dataclasses import asdict

    df = pd.DataFrame([asdict(r) for r in records])
    df["chunk_tokens"] = [(extra or {}).get(r.request_id, []) for r in records]
    return df


def test_tokens_in_window_credits_requests_crossing_the_edges() -> None:
    # chunks at 101, 102, 103, 104; 8 tokens spread evenly = 2 per chunk; window [102.5, 110] holds 2 chunks
    a = stream(100.0, 1.0, [1.0, 1.0, 1.0], 8, request_id="a")
    # starts inside, is cut at the window end with 2 of its chunks inside: 111 and 112 fall outside
    b = stream(108.0, 1.0, [1.0, 1.0, 1.0, 1.0], 5, request_id="b", success=False, error="cut: step ended")
    # no token at all (failed before the first byte)
    c = fail(105.0, request_id="c")
    df = _frame([a, b, c])
    assert tokens_in_window(df, 102.5, 110.0) == pytest.approx(2 * 2 + 2 * 1)
    # chunk_tokens make it exact: a's chunks carry 1, 2, 3, 2 tokens -> 3 + 2 in the window
    df = _frame([a, b, c], {"a": [1, 2, 3, 2]})
    assert tokens_in_window(df, 102.5, 110.0) == pytest.approx(5 + 2)
    # a chunk_tokens list that does not match the chunks falls back to the even spread
    df = _frame([a], {"a": [1, 2]})
    assert tokens_in_window(df, 102.5, 110.0) == pytest.approx(4)


def test_engine_counter_is_interpolated_at_the_window_edges_and_summed_over_engines() -> None:
    rows = []
    for t, v in ((0.0, 0.0), (10.0, 100.0), (20.0, 200.0)):
        rows.append({"ts": t, "target": "e0", "metric": "vllm:generation_tokens_total", "value": v})
        rows.append({"ts": t, "target": "e1", "metric": "vllm:generation_tokens_total", "value": v / 2})
        rows.append({"ts": t, "target": "e1", "metric": "vllm:num_requests_running", "value": 3.0})
    m = pd.DataFrame(rows)
    assert engine_tokens_in_window(m, 5.0, 15.0) == pytest.approx(100.0 + 50.0)
    assert math.isnan(engine_tokens_in_window(m, -1.0, 15.0))  # no scrape before the window: unknown


def test_summary_tok_per_s_uses_chunks_and_old_output_tps_completions(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    # window [105, 120]; 10 tokens each, one per chunk, chunks 1 s apart
    recs = [
        stream(101.0, 0.0, [1.0] * 9, 10, request_id="edge"),  # chunks 101..110: 6 inside, completes inside
        stream(110.0, 0.0, [1.0] * 9, 10, request_id="late"),  # chunks 110..119: all 10 inside
        stream(115.0, 0.0, [1.0] * 4, 5, request_id="cut", success=False, error="cut: step ended"),
    ]
    write_load_step(run, "single", "users", 3, 0, recs, extra={"cut": {"outcome": "cut"}})
    v = analyze_verdict(run, n_boot=200)
    row = v.summary.iloc[0]
    assert row["tok_per_s"] == pytest.approx((6 + 10 + 5) / 15.0)
    assert row["output_tps"] == pytest.approx(20 / 15.0)  # vLLM bench's count: completed successes
    assert row["cut"] == 1 and row["failed"] == 0 and row["error_rate"] == 0.0


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_intervals_have_known_answers() -> None:
    const = [RepData(np.full(50, 7.0), 10.0)]
    point, dist = percentile_ci(const, 99)
    assert point == 7.0 and ci(dist) == (7.0, 7.0)
    point, dist = rate_ci([RepData(np.full(10, 3.0), 10.0)])
    assert point == pytest.approx(3.0) and ci(dist) == pytest.approx((3.0, 3.0))
    # two repetitions with different rates: reps are resampled, so the interval spans both
    point, dist = rate_ci([RepData(np.full(10, 1.0), 10.0), RepData(np.full(10, 3.0), 10.0)], seed=1)
    lo, hi = ci(dist)
    assert point == pytest.approx(2.0) and lo == pytest.approx(1.0) and hi == pytest.approx(3.0)
    # a wide sample: the 95 % interval of the median contains the true median and is narrower than the data
    rng = np.random.default_rng(0)
    x = rng.normal(100.0, 10.0, 2000)
    point, dist = percentile_ci([RepData(x)], 50, seed=2)
    lo, hi = ci(dist)
    assert lo < 100.0 < hi and hi - lo < 2.0
    assert all(math.isnan(v) for v in ci(np.full(100, np.nan)))  # undefined: no interval


def test_not_distinguishable_when_ci_contains_zero_or_below_harness_error() -> None:
    assert not distinguishable(-1.0, 3.0, 1.0)
    assert distinguishable(2.0, 4.0, 3.0)
    assert not distinguishable(2.0, 4.0, 3.0, harness_error=5.0)
    assert not distinguishable(math.nan, 4.0, 3.0)
    a, b = np.full(100, 10.0), np.linspace(0, 2, 100)
    lo, hi = diff_ci(a, b)
    assert lo > 7.9 and hi < 10.1


# ---------------------------------------------------------------- flags


def test_flag_rules() -> None:
    th = Thresholds()
    clean = {"requests": 500, "error_rate": 0.0, "cut_share": 0.0, "ttft_p50_ms": 100.0}
    assert flags_for({**clean, "harness_ttft_error_p99_ms": 24.0}, 0.0, 0, th) == []
    # harness limit: max(10 ms, 25 % of TTFT p50 = 25 ms)
    assert flags_for({**clean, "harness_ttft_error_p99_ms": 26.0}, 0.0, 0, th) == ["harness_error"]
    assert flags_for({**clean, "ttft_p50_ms": 8.0, "harness_ttft_error_p99_ms": 11.0}, 0.0, 0, th) == [
        "harness_error"
    ]
    assert flags_for(clean, 0.2, 0, th) == ["starved"]
    assert flags_for(clean, 0.0, 1, th) == ["starved"]  # a CPU warning in locust.log
    assert flags_for({**clean, "requests": 99}, 0.0, 0, th) == ["few_requests_p99"]
    # cuts: a backlog beyond Little's law (throughput x mean E2E open at the end), not a plain share
    backlog = {"cut": 40, "cut_expected": 20.0}
    assert flags_for({**clean, "error_rate": 0.01, **backlog}, 0.0, 0, th) == ["errors", "cuts"]
    steady = {"cut": 25, "cut_expected": 20.0, "cut_share": 0.5}  # half open at the end, as expected
    assert flags_for({**clean, **steady}, 0.0, 0, th) == []
    assert flags_for({**clean, "cut": 3, "cut_expected": 1.0}, 0.0, 0, th) == []  # within the excess floor
    assert flags_for({**clean, "cut": 5, "cut_expected": float("nan")}, 0.0, 0, th) == ["cuts"]
    assert usable(["few_requests_p99"]) and not usable(["few_requests_p99"], p99=True)
    assert not usable(["starved"])


def test_starved_steps_are_flagged_from_records_and_locust_log(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    lagged = [
        rec(106.0 + i * 0.1, request_id=f"l{i}", client_loop_lag_ms=80.0 if i < 20 else 1.0)
        for i in range(120)
    ]
    write_load_step(run, "single", "users", 10, 0, lagged)
    calm = [rec(106.0 + i * 0.1, request_id=f"c{i}", client_loop_lag_ms=1.0) for i in range(120)]
    log = "[2026] WARNING/locust.runners: CPU usage above 90%! This may constrain your throughput\n"
    write_load_step(run, "single", "users", 20, 0, calm, locust_log=log)
    write_load_step(run, "single", "users", 30, 0, calm)
    # the self-monitor's count of lagging seconds, against the 20 s step: 1 s (5 %) is a hiccup, 4 s is not
    monitor = "[2026] INFO/loadtests: self-monitor: max CPU 12%, max loop lag 52.6 ms, {} second(s) over a "
    monitor += "warning threshold\n"
    write_load_step(run, "single", "users", 40, 0, calm, locust_log=monitor.format(1))
    write_load_step(run, "single", "users", 50, 0, calm, locust_log=monitor.format(4))
    v = analyze_verdict(run, n_boot=100)
    flags = dict(zip(v.summary["load"], v.summary["flags"], strict=True))
    assert flags == {10.0: ["starved"], 20.0: ["starved"], 30.0: [], 40.0: [], 50.0: ["starved"]}
    assert v.summary.set_index("load").loc[10.0, "starved_share"] == pytest.approx(20 / 120)
    assert v.summary.set_index("load").loc[50.0, "starved_share"] == pytest.approx(4 / 20)
    doc = summary_dict(v)
    assert [s["flags"] for s in doc["steps"]] == [["starved"], ["starved"], [], [], ["starved"]]
    assert "starved" in console_table(v)


# ---------------------------------------------------------------- saturation and crossover


def _arm(run, config: str, kind: str, loads_tokens: dict[float, int], n: int = 150) -> None:
    """Steps whose tok/s is exactly tokens*n/15 (n one-chunk requests evenly inside the 15 s window)."""
    for load, tokens in loads_tokens.items():
        recs = [
            stream(105.5 + 14.0 * i / n, 0.05, [], tokens + (i % 3) - 1, request_id=f"{config}-{load}-{i}")
            for i in range(n)
        ]
        write_load_step(run, config, kind, load, 0, recs)


def test_crossover_and_saturation_with_users(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run, {"ttft_ms": 1000})
    write_config(run, "routed", "routed", ["e0", "e1"])
    write_config(run, "single", "single", ["s0"])
    # routed: rises then plateaus from 40 users; single: ahead at 1 and 10, then flat
    _arm(run, "routed", "users", {1: 10, 10: 40, 20: 80, 40: 80})
    _arm(run, "single", "users", {1: 20, 10: 60, 20: 60, 40: 60})
    v = analyze_verdict(run, n_boot=300)
    tps = v.summary.set_index(["config", "load"])["tok_per_s"]
    assert tps[("routed", 20.0)] == pytest.approx(80 * 150 / 15.0)
    x = v.crossovers[("routed", "single", "users")]
    assert x is not None and x["load"] == 20.0 and x["winner"] == "a" and not x["everywhere"]
    assert x["diff_ci95"][0] > 0
    sat = v.saturation
    assert sat["routed"]["load"] == 40.0 and sat["routed"]["reason"] == "plateau"
    assert sat["routed"]["tok_per_s"] == pytest.approx(800.0)
    assert sat["single"]["load"] == 20.0 and sat["single"]["reason"] == "plateau"
    doc = summary_dict(v)
    assert doc["verdict"]["crossover"] == 20.0
    assert doc["verdict"]["saturation"]["routed"]["load"] == 40.0
    assert any("from 20 users on" in s for s in v.sentences)


def test_no_crossover_when_the_top_load_is_a_tie_or_flagged(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    _arm(run, "routed", "users", {1: 10, 10: 60})
    _arm(run, "single", "users", {1: 20, 10: 60})
    v = analyze_verdict(run, n_boot=300)
    assert v.crossovers[("routed", "single", "users")] is None
    assert summary_dict(v)["verdict"]["crossover"] is None
    assert any("none in range" in s for s in v.sentences)
    assert v.saturation["routed"] is None  # still rising at its top load


def test_rate_steps_and_sweep_phase_are_read_and_reported(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    _arm(run, "routed", "rate", {0.5: 10, 2.5: 40})
    _arm(run, "single", "rate", {0.5: 30, 2.5: 30})
    steps = load_steps(run)
    assert set(steps["load_kind"]) == {"rate"} and sorted(set(steps["load"])) == [0.5, 2.5]
    assert steps["users"].isna().all()
    v = analyze_verdict(run, n_boot=300)
    assert v.load_kind == "rate"
    x = v.crossovers[("routed", "single", "rate")]
    assert x is not None and x["load"] == 2.5
    table = console_table(v)
    assert "2.5 req/s" in table and "0.5 req/s" in table


def test_old_step_json_without_load_kind_reads_as_users(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_step(run, "single", 7, 0, [rec(110.0)])
    steps = load_steps(run)
    assert steps.loc[0, "load_kind"] == "users" and steps.loc[0, "load"] == 7.0 and steps.loc[0, "users"] == 7
    df = load_all(run).records
    assert df.loc[0, "outcome"] == "ok" and df.loc[0, "chunk_tokens"] == []


def test_print_summary_writes_summary_json_and_never_raises(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    _arm(run, "single", "users", {1: 10, 10: 40})
    out: list[str] = []
    assert print_summary(run, echo=out.append) is not None
    doc = json.loads((run / "summary.json").read_text())
    row = doc["steps"][0]
    for key in (
        "configuration",
        "load_kind",
        "load",
        "tok_per_s",
        "tok_per_s_ci95",
        "ttft_p50_ms",
        "ttft_p99_ms",
    ):
        assert key in row
    assert {"tpot_p50_ms", "harness_ttft_error_p99_ms", "flags"} <= set(row)
    lo, hi = row["tok_per_s_ci95"]
    assert lo <= row["tok_per_s"] <= hi
    assert set(doc["verdict"]) >= {"saturation", "crossover"}
    assert any("tok/s [95% CI]" in line for line in out)
    # a dir that is not a results dir: a message, not an exception
    bad: list[str] = []
    assert print_summary(tmp_path / "nothing-here", echo=bad.append) is None
    assert bad and bad[0].startswith("summary: not written")


def test_sweep_rates_that_differ_per_arm_are_interpolated(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    # each arm planned its own rates (a sweep): A ran 1 and 3 req/s, B ran 2 and 4
    _arm(run, "routed", "rate", {1.0: 10, 3.0: 50})
    _arm(run, "single", "rate", {2.0: 20, 4.0: 20})
    for r in (1.0, 3.0):
        step = run / "routed" / f"rate={r:g}" / "rep=0" / "step.json"
        info = json.loads(step.read_text())
        step.write_text(json.dumps({**info, "sweep_phase": "interpolated"}))
    v = analyze_verdict(run, n_boot=300)
    cmp = v.comparisons[("routed", "single", "rate")]
    tok = cmp[cmp["metric"] == "tok_per_s"].set_index("load")
    # compared inside the overlap [2, 3]: A is interpolated at 2, B at 3
    assert list(tok.index) == [2.0, 3.0] and tok["interpolated"].all()
    assert tok.loc[2.0, "value_a"] == pytest.approx((10 + 50) / 2 * 150 / 15.0)
    assert tok.loc[3.0, "value_b"] == pytest.approx(20 * 150 / 15.0)
    assert tok.loc[3.0, "winner"] == "a" and tok.loc[2.0, "winner"] == "a"
    assert v.crossovers[("routed", "single", "rate")]["load"] == 2.0
    assert set(v.summary["sweep_phase"].dropna()) == {"interpolated"}


def test_why_names_expert_shares_beside_the_classifiers_cluster_sizes(tmp_path) -> None:
    run = tmp_path / "exp" / "run"
    write_manifest(run)
    write_config(run, "routed", "routed", ["e0", "e1", "e2"])
    (run / "routed" / "classifier").mkdir(parents=True)
    (run / "routed" / "classifier" / "card.json").write_text(
        json.dumps({"k": 3, "cluster_sizes": [60, 25, 15]})
    )
    recs = []
    for i in range(100):
        k = 0 if i < 60 else (1 if i < 85 else 2)
        ttft = 0.3 if k == 0 else 0.1  # the busy expert is slower
        recs.append(rec(106.0 + i * 0.1, request_id=f"r{i}", expert=f"e{k}", cluster=k, ttft_s=ttft))
    running = [
        f"{t},e{k},vllm:num_requests_running,,{6 if k == 0 else 2}" for t in range(100, 121) for k in range(3)
    ]
    write_load_step(run, "routed", "users", 10, 0, recs, metrics_rows=running)
    v = analyze_verdict(run, n_boot=100)
    from analysis.why import classifier_cards, engine_table, expert_table

    ex = expert_table(v.data.records, classifier_cards(run)).set_index("expert")
    assert ex.loc["e0", "share"] == pytest.approx(0.6) and ex.loc["e0", "train_share"] == pytest.approx(0.6)
    assert ex.loc["e0", "ttft_p50_ms"] == pytest.approx(300.0) and ex.loc["e1", "clusters"] == "1"
    eng = engine_table(v.summary, v.data.configs).iloc[0]
    assert eng["engines"] == 3 and eng["running_per_engine"] == pytest.approx(10 / 3)
    text = " ".join(v.sentences)
    assert "e0 took 60% of the requests (the others 25%, 15%)" in text
    assert "its cluster(s) 0 hold 60% of the classifier's training prompts" in text


def test_records_without_contract_2_columns_get_outcome_and_chunk_tokens() -> None:
    from analysis.load import normalize_records

    old = pd.DataFrame(
        {
            "success": [True, False, False],
            "error": ["", "HTTP 503", "cut: step ended"],
            "itl_s": [[0.1], [], [0.1]],
        }
    )
    df = normalize_records(old)
    assert df["outcome"].tolist() == ["ok", "error", "cut"]
    assert df["chunk_tokens"].tolist() == [[], [], []]
    new = old.assign(outcome=["ok", "", "cut"], chunk_tokens=["[1,2]", "", "[3]"])
    df = normalize_records(new)
    assert df["outcome"].tolist() == ["ok", "error", "cut"]
    assert df["chunk_tokens"].tolist() == [[1, 2], [], [3]]
