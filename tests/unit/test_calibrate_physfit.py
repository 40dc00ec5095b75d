"""The physical fit (system/calibration/physfit.py, loo.py, tables.py) on small synthetic steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from system.calibration import loo
from system.calibration import physfit as F
from system.calibration.reference import RefStep, load_reference
from system.calibration.tables import fit_tables, splice

TRUTH = {
    "memory_eff": 0.3,
    "layer_overhead_s": 4e-4,
    "score_bytes": 2.0,
    "step_overhead_s": 2e-3,
    "per_seq_overhead_s": 3e-4,
    "per_request_overhead_s": 1e-3,
    "request_latency_s": 0.01,
    "max_num_batched_tokens": 8192,
}
LENGTHS = {8: [50, 120, 80, 200, 30, 90, 160, 70]}


def _synthetic(shape: str, conc: int) -> RefStep:
    """A 'measured' step made by the model itself from TRUTH."""
    s = RefStep("syn", shape, True, conc, 8, {})
    d = F.predict_step(s, TRUTH, LENGTHS).as_dict()
    meas = {
        m: d[m]
        for m in ("tok_per_s", "ttft_p50_ms", "tpot_p50_ms", "gpu_util_mean", "ttft_p99_ms", "e2e_p50_s")
    }
    return RefStep(f"syn-{shape}", shape, True, conc, 8, meas)


def test_fit_recovers_host_terms_from_steps_the_model_made() -> None:
    steps = [_synthetic("1b", 1), _synthetic("1b", 8)]
    params = {k: F.GRAPH_PARAMS[k] for k in ("step_overhead_s", "per_seq_overhead_s")}
    fixed = {k: v for k, v in TRUTH.items() if k not in params}
    f = F.fit(steps, LENGTHS, params, fixed=fixed, budgets=[8192])
    assert f.values["step_overhead_s"] == pytest.approx(2e-3, rel=0.05)
    assert f.values["per_seq_overhead_s"] == pytest.approx(3e-4, rel=0.05)
    again = F.fit(steps, LENGTHS, params, fixed=fixed, budgets=[8192])
    assert again.values == f.values  # deterministic


def test_residuals_skip_unmeasured_metrics_and_weigh_util_in_points() -> None:
    s = _synthetic("8b", 1)
    pred = F.predict_step(s, TRUTH, LENGTHS)
    assert F.residuals(pred, s) == pytest.approx([0.0, 0.0, 0.0, 0.0], abs=1e-12)
    half = RefStep(
        s.run, s.shape, True, 1, 8, {**s.measured, "tpot_p50_ms": math.nan, "gpu_util_mean": math.nan}
    )
    assert len(F.residuals(pred, half)) == 2
    off = RefStep(
        s.run, s.shape, True, 1, 8, {**s.measured, "gpu_util_mean": s.measured["gpu_util_mean"] - 10}
    )
    assert F.residuals(pred, off)[-1] == pytest.approx(10 / F.UTIL_SCALE)


def test_held_out_steps_are_never_in_the_training_set() -> None:
    s = _synthetic("1b", 1)
    with pytest.raises(AssertionError, match="held-out"):
        loo._held_out([s], [s], LENGTHS)


def test_reference_data_loads_with_its_shapes_and_lengths() -> None:
    steps, lengths = load_reference()
    assert {s.run for s in steps} == {"A-1b", "B-1b", "C-8b", "A-1b-nograph"}
    assert all(len(lengths[s.n]) == s.n for s in steps)
    assert sum(math.isfinite(s.measured["gpu_util_mean"]) for s in steps) == 6


def test_doc_tables_are_generated_from_the_committed_report(tmp_path: Path) -> None:
    rep = json.loads((Path(__file__).parents[2] / loo.REPORT).read_text())
    tables = fit_tables(rep)
    loso = rep["leave_one_step_out"]["summary"]["8b"]
    assert f"{loso['tok_per_s_mape_pct']:.1f} %" in tables["loso-summary"]
    doc = tmp_path / "d.md"
    mark = "<!-- generated:noise (system/calibration/tables.py; do not edit by hand) -->"
    doc.write_text(f"a\n{mark}\nold\n<!-- end -->\nb\n")
    splice(doc, {"noise": tables["noise"]})
    text = doc.read_text()
    assert "old" not in text and tables["noise"] in text and text.startswith("a\n") and text.endswith("b\n")
    with pytest.raises(ValueError, match="no marker"):
        splice(doc, {"missing": "x"})
