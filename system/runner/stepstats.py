"""Quick per-step figures the runner needs itself (progress line, auto warm-up, sweep decisions).

The report's figures (CIs, flags) are computed by `analysis`; these are plain point values from one step's
records: requests by outcome, the median E2E, and request rate, output tokens/s and SLO attainment inside the
window [start_ts + warmup_s, end_ts], tokens credited at their chunk times (start + ttft + cumsum(itl)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def chunk_times(row: Any) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times, tokens) of one record's content chunks; tokens spread evenly without chunk_tokens."""
    gaps = list(row["itl_s"]) if isinstance(row["itl_s"], list) else []
    if math.isnan(float(row["ttft_s"])):
        return np.empty(0), np.empty(0)
    t = float(row["start_ts"]) + float(row["ttft_s"]) + np.concatenate([[0.0], np.cumsum(gaps)])
    toks = row.get("chunk_tokens") if hasattr(row, "get") else None
    if isinstance(toks, list) and len(toks) == len(t):
        return t, np.asarray(toks, dtype=float)
    n = max(int(row["output_tokens"]), 0)
    return t, np.full(len(t), n / len(t) if len(t) else 0.0)


def step_figures(df: Any, window: tuple[float, float], slos: dict[str, float | None]) -> dict[str, Any]:
    """Figures of one step's records (a DataFrame from read_records) over `window` (epoch seconds)."""
    w0, w1 = window
    span = max(w1 - w0, 1e-9)
    out: dict[str, Any] = {"window_s": w1 - w0}
    if len(df) == 0:
        return {**out, "tok_per_s": 0.0, "req_per_s": 0.0, "slo_attainment": math.nan}
    ok = df[df["outcome"] == "ok"]
    ended = df[(df["end_ts"] >= w0) & (df["end_ts"] <= w1)]
    ok_in = ended[ended["outcome"] == "ok"]
    tokens = 0.0
    for _, row in df[df["outcome"].isin(["ok", "cut", "error"])].iterrows():
        t, k = chunk_times(row)
        if len(t):
            tokens += float(k[(t >= w0) & (t <= w1)].sum())
    out["tok_per_s"] = tokens / span
    out["req_per_s"] = len(ok_in) / span
    finished = ended[ended["outcome"] != "cut"]
    if len(finished) and any(v is not None for v in slos.values()):
        meets = finished["outcome"] == "ok"
        if slos.get("ttft_ms") is not None:
            meets &= finished["ttft_s"] * 1000.0 <= float(slos["ttft_ms"])  # type: ignore[arg-type]
        if slos.get("tpot_ms") is not None:
            tpot = finished["tpot_s"].fillna(0.0) * 1000.0
            meets &= tpot <= float(slos["tpot_ms"])  # type: ignore[arg-type]
        if slos.get("e2e_ms") is not None:
            meets &= finished["e2e_s"] * 1000.0 <= float(slos["e2e_ms"])  # type: ignore[arg-type]
        out["slo_attainment"] = float(meets.mean())
    else:
        out["slo_attainment"] = math.nan
    out["ttft_p50_ms"] = float(ok_in["ttft_s"].median() * 1000.0) if len(ok_in) else math.nan
    out["median_e2e_s"] = float(ok["e2e_s"].median()) if len(ok) else math.nan
    return out


def median_e2e_s(df: Any) -> float:
    """Median E2E of the step's completed requests (NaN when none completed)."""
    if len(df) == 0:
        return math.nan
    ok = df[df["outcome"] == "ok"]
    return float(ok["e2e_s"].median()) if len(ok) else math.nan
