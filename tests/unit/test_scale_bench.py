"""The scale benchmarks' statistics, and the generated DEPLOY.md section matches its JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from system.bench.loadgen import events_between, mean_ci, status, workers_needed
from system.bench.records_scale import fit_per_million
from system.bench.scale_doc import BEGIN, DOC, END, ROOT, render, workers_rows


def test_mean_ci_and_target_status() -> None:
    m = mean_ci([1.0, 2.0, 3.0])
    assert m["mean"] == 2.0 and m["ci95"] == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])["ci95"])
    assert status({"mean": 5.0, "ci95": 1.0}, 10) == "met"
    assert status({"mean": 15.0, "ci95": 1.0}, 10) == "missed"
    assert status({"mean": 9.5, "ci95": 1.0}, 10) == "inconclusive"
    assert status({"mean": 5.0, "ci95": math.nan}, 10) == "inconclusive"  # one repetition proves nothing


def test_events_between_counts_chunk_arrivals_in_the_window() -> None:
    import pandas as pd

    df = pd.DataFrame({"start_ts": [100.0, 100.0], "ttft_s": [1.0, math.nan], "itl_s": [[0.5, 0.5, 1.0], []]})
    # chunks at 101.0, 101.5, 102.0, 103.0; the second request never got a token
    assert events_between(df, 101.2, 102.5) == 2
    assert events_between(df, 0, 1e9) == 4


def test_workers_needed_rounds_up() -> None:
    rows = workers_needed(1000.0, [{"users": 1000, "events_per_s_per_user": 20.0}])
    assert rows[0]["events_per_s"] == 20000.0 and rows[0]["workers"] == 20
    assert workers_needed(999.0, [{"users": 1000, "events_per_s_per_user": 20.0}])[0]["workers"] == 21


def test_fit_per_million_on_exact_lines_and_noise() -> None:
    f = fit_per_million([1e5, 2e5, 4e5], [10.0 + 3e-5 * x for x in (1e5, 2e5, 4e5)])
    assert f["per_million"] == pytest.approx(30.0) and f["intercept"] == pytest.approx(10.0)
    assert f["loo_rmse"] == pytest.approx(0.0, abs=1e-9)
    noisy = fit_per_million([1e5, 1e5, 2e5, 2e5, 4e5, 4e5], [4, 6, 7, 9, 13, 15])
    assert noisy["loo_rmse"] > 0  # LOO error is reported, not the in-sample fit


def test_workers_rows_fall_back_to_cpu_cost_when_no_level_met() -> None:
    load = {"events_per_core_s_at_full_cpu": 4000.0, "at_target": [{"sustained": None}]}
    basis, rows = workers_rows(load)
    assert "not met" in basis or "no tested level" in basis
    # 1,000 users x 50 events/s / (4,000 x 0.5) = 25 workers
    assert rows[0][1:] == (1000, 50000.0, 25)


def test_deploy_doc_section_is_generated_from_the_benchmark_json() -> None:
    bench = ROOT / "results" / "benchmarks"
    if not (bench / "loadgen.json").exists() or not (bench / "records.json").exists():
        pytest.fail("results/benchmarks/loadgen.json and records.json must be committed with docs/DEPLOY.md")
    load = json.loads((bench / "loadgen.json").read_text())
    rec = json.loads((bench / "records.json").read_text())
    text = Path(DOC).read_text()
    assert BEGIN in text and END in text
    section = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    assert section == render(load, rec), "run `python -m system.bench.scale_doc` after the benchmarks"
