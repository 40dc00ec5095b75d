"""The verdict: headline figures with 95 % CIs, each configuration's saturation point, and the crossover.

Rules (docs/ANALYSIS.md, "Verdict"):
- headline figures (tok/s, goodput, TTFT p50/p99, TPOT p50, E2E p50/p99) get bootstrap CIs (analysis.stats):
  rates resample time blocks of each window (analysis.window.n_blocks), percentiles resample requests, and
  repetitions are resampled too when there are at least two;
- a difference counts only when its CI excludes zero and, for latencies, it exceeds the larger harness TTFT
  error p99 of the two rows; otherwise it is "not distinguishable";
- flagged rows (analysis.flags) never back a claim;
- saturation: walking up the loads, the first load whose tok/s is not distinguishably above the best lower
  load (plateau), or where fewer than SLO_ATTAINMENT of the completed requests meet every SLO, or requests
  fail; the maximum goodput is taken over the usable loads up to that point;
- crossover: the smallest load from which the same arm wins on tok/s (CI) at every larger usable load;
  None ("none in range") when the highest usable load is not a win. Rate loads one arm did not run (sweeps)
  are interpolated between its neighbouring rates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.flags import usable
from analysis.metrics import meets_slos
from analysis.stats import RepData, ci, diff_ci, distinguishable, percentile_ci, rate_ci, seed_for
from analysis.window import event_blocks, n_blocks, token_blocks

SLO_ATTAINMENT = 0.90  # share of completed requests that must meet every SLO for the load to be "within SLO"
# metric -> (kind, record column, percentile); rates are per-window sums, percentiles pool requests (ms)
HEADLINE: dict[str, tuple[str, str, float]] = {
    "tok_per_s": ("rate", "", 0.0),
    "goodput_rps": ("rate", "", 0.0),
    "ttft_p50_ms": ("pct", "ttft_s", 50.0),
    "ttft_p99_ms": ("pct", "ttft_s", 99.0),
    "tpot_p50_ms": ("pct", "tpot_s", 50.0),
    "e2e_p50_ms": ("pct", "e2e_s", 50.0),
    "e2e_p99_ms": ("pct", "e2e_s", 99.0),
}
LATENCY = {"ttft_p50_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p99_ms"}  # harness error applies
LOWER_IS_BETTER = {m for m in HEADLINE if m.endswith("_ms")}
Key = tuple[str, str, float]  # (config, load_kind, load)


@dataclass
class Headline:
    """Point estimates, CIs and bootstrap distributions per (config, load_kind, load)."""

    table: pd.DataFrame
    dists: dict[Key, dict[str, np.ndarray]] = field(default_factory=dict)


def _rep_data(
    records: pd.DataFrame, steps: pd.DataFrame, slos: Mapping[str, float]
) -> dict[str, list[RepData]]:
    out: dict[str, list[RepData]] = {m: [] for m in HEADLINE}
    for _, st in steps.iterrows():
        key = (records["run_id"] == st["run_id"]) & (records["config"] == st["config"])
        key &= (records["load_kind"] == st["load_kind"]) & (records["load"] == st["load"])
        recs = records[key & (records["rep"] == st["rep"])]
        w, ws, we = float(st["window_s"]), float(st["window_start"]), float(st["window_end"])
        # rates resample time blocks of the window (so the number of completions varies too, and blocks
        # keep the short-range correlation of a closed loop); percentiles resample requests
        nb = n_blocks(w)
        out["tok_per_s"].append(RepData(token_blocks(recs, ws, we, nb), w))
        win = recs[recs["in_window"]]
        good = meets_slos(win, slos).to_numpy(dtype=float) if slos else np.zeros(len(win))
        ends = pd.to_numeric(win["end_ts"], errors="coerce").to_numpy()
        out["goodput_rps"].append(RepData(event_blocks(ends, good, ws, we, nb), w))
        ok = win[win["success"]]
        for m, (kind, col, _) in HEADLINE.items():
            if kind == "pct":
                out[m].append(RepData(pd.to_numeric(ok[col], errors="coerce").to_numpy() * 1000.0, w))
    return out


def headline(
    records: pd.DataFrame, steps: pd.DataFrame, slos: Mapping[str, float], n_boot: int = 1000
) -> Headline:
    """Headline figures with `<metric>_ci95_lo/_hi` per config × load (repetitions pooled as in stats)."""
    rows, dists = [], {}
    for (config, kind, load), st in steps.groupby(["config", "load_kind", "load"], sort=True):
        reps = _rep_data(records, st, slos)
        row: dict[str, Any] = {"config": config, "load_kind": kind, "load": float(load), "reps": len(st)}
        d: dict[str, np.ndarray] = {}
        for m, (mk, _, q) in HEADLINE.items():
            seed = seed_for(config, kind, load, m)
            if mk == "rate":
                if m == "goodput_rps" and not slos:
                    point, dist = math.nan, np.full(n_boot, math.nan)
                else:
                    point, dist = rate_ci(reps[m], n_boot, seed)
            else:
                point, dist = percentile_ci(reps[m], q, n_boot, seed)
            lo, hi = ci(dist)
            row[m], row[f"{m}_ci95_lo"], row[f"{m}_ci95_hi"] = point, lo, hi
            d[m] = dist
        rows.append(row)
        dists[(str(config), str(kind), float(load))] = d
    return Headline(pd.DataFrame(rows), dists)


def _row(summary: pd.DataFrame, config: str, kind: str, load: float) -> dict[str, Any]:
    sel = summary[(summary["config"] == config) & (summary["load_kind"] == kind) & (summary["load"] == load)]
    return sel.iloc[0].to_dict() if len(sel) else {}


def _saturation_usable(flags: Sequence[str]) -> bool:
    # errors and cuts are symptoms of overload: such a row can still *mark* saturation, never raise the max
    return usable([f for f in flags if f not in ("errors", "cuts")])


def saturation(summary: pd.DataFrame, hl: Headline, config: str, kind: str) -> dict[str, Any] | None:
    """Where `config` saturates under `kind` load: {load, tok_per_s, ..., reason}; None if not in range.

    `summary` needs `flags` (analysis.flags.add_flags), `throughput_rps`, `goodput_rps`, `error_rate`.
    """
    rows = summary[(summary["config"] == config) & (summary["load_kind"] == kind)].sort_values("load")
    best: tuple[float, np.ndarray, float] | None = None  # (tok/s, its distribution, load)
    max_good: tuple[float, float] = (math.nan, math.nan)
    for _, r in rows.iterrows():
        flags = list(r["flags"])
        if not _saturation_usable(flags):
            continue
        load = float(r["load"])
        d = hl.dists[(config, kind, load)]
        clean = usable(flags)
        reason = None
        thr, good = float(r.get("throughput_rps", math.nan)), float(r.get("goodput_rps", math.nan))
        if not clean:
            reason = "errors" if "errors" in flags else "cuts"
        elif math.isfinite(good) and thr > 0 and good / thr < SLO_ATTAINMENT:
            reason = "slo"
        elif best is not None:
            lo, hi = diff_ci(d["tok_per_s"], best[1])
            if not distinguishable(lo, hi, float(r["tok_per_s"]) - best[0]) or lo < 0:
                reason = "plateau"
        if clean and reason != "slo" and math.isfinite(good) and not good <= max_good[0]:
            max_good = (good, load)
        if reason is not None and best is not None:
            b = best
            lo, hi = ci(b[1])
            return {
                "load": load,
                "reason": reason,
                "tok_per_s": b[0],
                "tok_per_s_ci95": [lo, hi],
                "tok_per_s_load": b[2],
                "max_goodput_rps": max_good[0],
                "max_goodput_load": max_good[1],
            }
        if reason is not None and best is None:  # saturated at the lowest usable load already
            lo, hi = ci(d["tok_per_s"])
            return {
                "load": load,
                "reason": reason,
                "tok_per_s": float(r["tok_per_s"]),
                "tok_per_s_ci95": [lo, hi],
                "tok_per_s_load": load,
                "max_goodput_rps": max_good[0],
                "max_goodput_load": max_good[1],
            }
        if clean and (best is None or float(r["tok_per_s"]) > best[0]):
            best = (float(r["tok_per_s"]), d["tok_per_s"], load)
    return None


def max_goodput(summary: pd.DataFrame, hl: Headline, config: str, kind: str) -> dict[str, Any] | None:
    """The highest goodput over the usable loads of `config` with its CI (None without SLOs or usable "
    "rows)."""
    rows = summary[(summary["config"] == config) & (summary["load_kind"] == kind)]
    rows = rows[[usable(list(f)) for f in rows["flags"]]] if len(rows) else rows
    rows = rows[rows["goodput_rps"].notna()] if len(rows) else rows
    if rows.empty:
        return None
    r = rows.sort_values(["goodput_rps", "load"], ascending=[False, True]).iloc[0]
    lo, hi = ci(hl.dists[(config, kind, float(r["load"]))]["goodput_rps"])
    return {"load": float(r["load"]), "goodput_rps": float(r["goodput_rps"]), "goodput_rps_ci95": [lo, hi]}


def _at(
    summary: pd.DataFrame, hl: Headline, config: str, kind: str, load: float
) -> tuple[dict[str, Any], dict[str, np.ndarray], bool] | None:
    """(row, bootstrap distributions, interpolated?) of `config` at `load`.

    Measured loads are returned as they are. Rate loads a configuration did not run (a sweep plans its rates
    from each configuration's own probes, so two arms rarely share one) are interpolated linearly between the
    two neighbouring measured rates: figures and bootstrap distributions alike, flags of both neighbours.
    """
    row = _row(summary, config, kind, load)
    if row:
        return row, hl.dists[(config, kind, float(load))], False
    if kind != "rate":
        return None
    loads = sorted(summary.loc[(summary["config"] == config) & (summary["load_kind"] == kind), "load"])
    below, above = [x for x in loads if x < load], [x for x in loads if x > load]
    if not below or not above:
        return None
    l0, l1 = below[-1], above[0]
    w = (load - l0) / (l1 - l0)
    r0, r1 = _row(summary, config, kind, l0), _row(summary, config, kind, l1)
    d0, d1 = hl.dists[(config, kind, float(l0))], hl.dists[(config, kind, float(l1))]
    out: dict[str, Any] = {}
    for k, v0 in r0.items():
        v1 = r1.get(k)
        num = isinstance(v0, int | float) and isinstance(v1, int | float) and not isinstance(v0, bool)
        out[k] = (1 - w) * float(v0) + w * float(v1) if num else v0
    out["load"] = float(load)
    out["flags"] = sorted(set(r0.get("flags", [])) | set(r1.get("flags", [])))
    dists = {m: (1 - w) * d0[m] + w * d1[m] for m in d0}
    return out, dists, True


def compare_loads(summary: pd.DataFrame, a: str, b: str, kind: str) -> list[float]:
    """Loads to compare A and B at: the common ones; for rates, every rate either ran inside both ranges."""
    la = set(summary.loc[(summary["config"] == a) & (summary["load_kind"] == kind), "load"])
    lb = set(summary.loc[(summary["config"] == b) & (summary["load_kind"] == kind), "load"])
    if kind != "rate" or not la or not lb:
        return sorted(la & lb)
    lo, hi = max(min(la), min(lb)), min(max(la), max(lb))
    return sorted(x for x in la | lb if lo <= x <= hi)


def compare_rows(
    summary: pd.DataFrame, hl: Headline, a: str, b: str, kind: str, metrics: Sequence[str] = tuple(HEADLINE)
) -> pd.DataFrame:
    """A − B per load and metric: diff, its CI, ratio, and which arm wins ("a", "b" or None).

    Columns: load_kind, load, metric, value_a, value_b, diff, diff_ci95_lo, diff_ci95_hi, ratio,
    harness_error_ms, winner, usable, interpolated (a rate one arm did not run, see _at), verdict
    ("a wins" / "b wins" / "not distinguishable" / "flagged").
    """
    rows = []
    for load in compare_loads(summary, a, b, kind):
        at_a, at_b = _at(summary, hl, a, kind, load), _at(summary, hl, b, kind, load)
        if at_a is None or at_b is None:
            continue
        (ra, da, ia), (rb, db, ib) = at_a, at_b
        herr = max(
            abs(float(ra.get("harness_ttft_error_p99_ms", math.nan) or 0.0)),
            abs(float(rb.get("harness_ttft_error_p99_ms", math.nan) or 0.0)),
            key=lambda v: v if math.isfinite(v) else -1,
        )
        for m in metrics:
            va, vb = float(ra.get(m, math.nan)), float(rb.get(m, math.nan))
            lo, hi = diff_ci(da[m], db[m])
            diff = va - vb
            err = herr if m in LATENCY and math.isfinite(herr) else 0.0
            p99 = m.endswith("_p99_ms")
            ok = usable(list(ra.get("flags", [])), p99) and usable(list(rb.get("flags", [])), p99)
            winner = None
            if ok and distinguishable(lo, hi, diff, err):
                better_a = diff < 0 if m in LOWER_IS_BETTER else diff > 0
                winner = "a" if better_a else "b"
            verdict = "flagged" if not ok else (f"{winner} wins" if winner else "not distinguishable")
            ratio = va / vb if vb and math.isfinite(vb) and math.isfinite(va) else math.nan
            rows.append(
                {
                    "load_kind": kind,
                    "load": float(load),
                    "metric": m,
                    "value_a": va,
                    "value_b": vb,
                    "diff": diff,
                    "diff_ci95_lo": lo,
                    "diff_ci95_hi": hi,
                    "ratio": ratio,
                    "harness_error_ms": err,
                    "winner": winner,
                    "usable": ok,
                    "interpolated": bool(ia or ib),
                    "verdict": verdict,
                }
            )
    return pd.DataFrame(rows)


def _winner(w: Any) -> str | None:
    """ "a" | "b" | None (pandas may hold a missing winner as None or NaN)."""
    return w if w in ("a", "b") else None


def crossover(cmp: pd.DataFrame, metric: str = "tok_per_s") -> dict[str, Any] | None:
    """The smallest load from which one arm wins `metric` at every larger usable load; None if none in range.

    `cmp` is compare_rows() of one pair and load kind. Unusable (flagged) loads are skipped. Returns
    {load, winner ("a"|"b"), diff, diff_ci95, everywhere (bool: it wins at every usable load)}.
    """
    sel = cmp[(cmp["metric"] == metric) & cmp["usable"].astype(bool)].sort_values("load")
    if sel.empty:
        return None
    winners = [_winner(w) for w in sel["winner"]]
    top = winners[-1]
    if top is None:
        return None
    i = len(winners) - 1
    while i > 0 and winners[i - 1] == top:
        i -= 1
    found = sel.iloc[i]
    return {
        "load": float(found["load"]),
        "winner": top,
        "diff": float(found["diff"]),
        "diff_ci95": [float(found["diff_ci95_lo"]), float(found["diff_ci95_hi"])],
        "everywhere": bool(found["load"] == sel["load"].iloc[0]),
    }
