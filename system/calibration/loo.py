"""Leave-one-step-out and leave-one-run-out validation of the physical fit; writes the fit report JSON."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from system.calibration import physfit as F
from system.calibration.reference import METRICS, UTIL, RefStep, load_reference
from system.engines.sim.profilefiles import save_profile

DATA = "results/reference/h100-transformers-serve"
REPORT = Path("results/reference/calibration/h100-transformers-serve.fit.json")
SHAPES = ("1b", "8b")


def _held_out(
    train: Sequence[RefStep], test: Sequence[RefStep], lengths: dict[int, list[int]]
) -> list[dict[str, Any]]:
    """Fit on `train`, predict every step of `test` (none of which is in `train`)."""
    keys = {s.key for s in train}
    assert not keys & {s.key for s in test}, "a held-out step is in the training set"
    f = F.fit_all(train, lengths, budgets=[F.DEFAULT_BUDGET])
    return [
        {
            "step": s.key,
            "shape": s.shape,
            "cuda_graph": s.cuda_graph,
            "errors": F.errors(s, F.predict_step(s, f.values, lengths)),
        }
        for s in test
    ]


def leave_one_step_out(steps: Sequence[RefStep], lengths: dict[int, list[int]]) -> list[dict[str, Any]]:
    """Each step predicted by a fit to all the others. A no-graph step is predicted by the graph fit plus a
    launch cost fitted to the other no-graph steps."""
    out = []
    for s in steps:
        out.extend(_held_out([t for t in steps if t.key != s.key], [s], lengths))
    return out


def leave_one_run_out(steps: Sequence[RefStep], lengths: dict[int, list[int]]) -> list[dict[str, Any]]:
    """Each CUDA-graph run predicted by a fit to the other runs (leaving out the only 7.2 B run is the
    1.1 B -> 7.2 B transfer). The no-graph run is the only one that identifies the launch cost, so it has
    no leave-one-run-out figure."""
    out = []
    for run in sorted({s.run for s in steps if s.cuda_graph}):
        test = [s for s in steps if s.run == run]
        train = [s for s in steps if s.run != run and s.cuda_graph]
        for row in _held_out(train, test, lengths):
            row["left_out_run"] = run
            out.append(row)
    return out


def cross_shape(steps: Sequence[RefStep], lengths: dict[int, list[int]]) -> dict[str, list[dict[str, Any]]]:
    """Fit on one shape's CUDA-graph runs only, predict the other shape's: does the physics transfer?"""
    out = {}
    for src, dst in (("1b", "8b"), ("8b", "1b")):
        train = [s for s in steps if s.shape == src and s.cuda_graph]
        test = [s for s in steps if s.shape == dst and s.cuda_graph]
        out[f"{src}->{dst}"] = _held_out(train, test, lengths)
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per shape (and 'all'): MAPE (%) of tok/s, TTFT p50, TPOT p50 (CUDA-graph steps), and the mean
    absolute GPU-utilisation error (points); plus the number of errors behind each figure."""
    out: dict[str, dict[str, float]] = {}
    groups = {sh: [r for r in rows if r["shape"] == sh and r["cuda_graph"]] for sh in SHAPES}
    groups["1b-nograph"] = [r for r in rows if not r["cuda_graph"]]
    for g, rs in groups.items():
        summ: dict[str, float] = {}
        for m in (*METRICS, UTIL):
            errs = [r["errors"][m]["error"] for r in rs if m in r["errors"]]
            if not errs:
                continue
            if m == UTIL:
                summ["gpu_util_abs_err_points"] = float(np.mean(np.abs(errs)))
            else:
                summ[f"{m}_mape_pct"] = 100.0 * float(np.mean(np.abs(errs)))
            summ[f"{m}_n"] = len(errs)
        out[g] = summ
    return out


def run_noise(steps: Sequence[RefStep]) -> dict[str, float]:
    """|A-1b / B-1b - 1| per metric and concurrency: the same set-up on two days (the data's noise)."""
    a = {s.conc: s for s in steps if s.run == "A-1b"}
    b = {s.conc: s for s in steps if s.run == "B-1b"}
    out = {}
    for c in sorted(set(a) & set(b)):
        for m in ("tok_per_s", "ttft_p50_ms", "e2e_p50_s"):
            va, vb = a[c].measured[m], b[c].measured[m]
            if math.isfinite(va) and math.isfinite(vb):
                out[f"{m}@{c}"] = 100.0 * abs(va / vb - 1.0)
    return out


def calibrate_reference(
    directory: Path | None = None,
    report: Path = REPORT,
    profile_dir: Path | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Full fit -> profiles; LOO tables -> report JSON. Returns the report."""
    steps, lengths = load_reference(directory) if directory else load_reference()
    t0 = time.process_time()
    full = F.fit_all(steps, lengths, budgets=[F.DEFAULT_BUDGET])
    loso = leave_one_step_out(steps, lengths)
    loro = leave_one_run_out(steps, lengths)
    cross = cross_shape(steps, lengths)
    graph = [s for s in steps if s.cuda_graph]
    budgets = {str(b): F.fit(graph, lengths, F.GRAPH_PARAMS, budgets=[b]).cost for b in F.TOKEN_BUDGETS}
    fitted_names = sorted({*F.GRAPH_PARAMS, *F.NOGRAPH_PARAMS})
    rep = {
        "data": DATA,
        "command": command,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_s": round(time.process_time() - t0, 1),
        "model": "system/engines/sim/costmodel.py + colocate.py (aggregate transformers-CB scheduler)",
        "fitted_params": fitted_names,
        "fixed": {
            "max_num_batched_tokens": F.DEFAULT_BUDGET,
            "compute_eff": 0.6,
            "switch_s": "n/a (1 instance)",
        },
        "params": full.values,
        "token_budget_search": {"what": "full-data least-squares cost per max_num_batched_tokens", **budgets},
        "leave_one_step_out": {"rows": loso, "summary": summarise(loso)},
        "leave_one_run_out": {"rows": loro, "summary": summarise(loro)},
        "cross_shape": {k: {"rows": v, "summary": summarise(v)} for k, v in cross.items()},
        "run_to_run_noise_pct": run_noise(steps),
    }
    report.parent.mkdir(parents=True, exist_ok=True)
    import json

    report.write_text(json.dumps(_clean(rep), indent=1) + "\n")
    if profile_dir is not None:
        for sh in SHAPES:
            base = F.base_profile(sh)
            name = f"transformers-cb-h100-llama-{sh}"
            vals = {k: v for k, v in full.values.items()}
            s = loso_summary_line(rep, sh)
            prof = base.with_overrides(
                **vals,
                name=name,
                description=base.description,
                provenance=f"fitted to {DATA} (runs A-1b, B-1b, C-8b, A-1b-nograph; one parameter set for "
                f"both shapes); leave-one-out: {s}",
            )
            save_profile(
                prof, profile_dir / f"{name}.json", calibration={"report": str(report), "command": command}
            )
    return rep


def loso_summary_line(rep: dict[str, Any], shape: str) -> str:
    s = rep["leave_one_step_out"]["summary"].get(shape, {})
    parts = [f"{m} {s[f'{m}_mape_pct']:.0f} %" for m in METRICS if f"{m}_mape_pct" in s]
    if "gpu_util_abs_err_points" in s:
        parts.append(f"util {s['gpu_util_abs_err_points']:.1f} pt")
    return "MAPE " + ", ".join(parts) if parts else "n/a"


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x
