"""Routed vs single: ratios per user count, the crossover user count, findings sentences from the numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

# summary column -> comparison column (routed / single)
RATIOS = {
    "throughput_rps": "throughput_x",
    "output_tps": "output_tps_x",
    "goodput_rps": "goodput_x",
    "ttft_p50_ms": "ttft_p50_x",
    "ttft_p99_ms": "ttft_p99_x",
    "tpot_p50_ms": "tpot_p50_x",
    "e2e_p50_ms": "e2e_p50_x",
    "e2e_p99_ms": "e2e_p99_x",
}
WIN_METRIC = "output_tps"  # "throughput" for the crossover: output tokens per second (docs/ANALYSIS.md)
NEVER = "never"


def _ratio(a: float, b: float) -> float:
    if not (np.isfinite(a) and np.isfinite(b)):
        return math.nan
    if b == 0:
        return math.inf if a > 0 else math.nan
    return a / b


def pairs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """Every (routed config, single config) pair in the summary, in name order."""
    routed = sorted(summary.loc[summary["topology"] == "routed", "config"].unique())
    single = sorted(summary.loc[summary["topology"] == "single", "config"].unique())
    return [(r, s) for r in routed for s in single]


def compare(
    summary: pd.DataFrame, routed: str | None = None, single: str | None = None, metric: str = WIN_METRIC
) -> pd.DataFrame:
    """One row per (routed, single, users) both configs measured: routed/single ratios and `routed_wins`.

    Ratios > 1 mean routed is higher: good for throughput, bad for latency. `routed_wins` is routed's `metric`
    strictly greater than single's at that user count. Pass `routed`/`single` to compare one pair only.
    """
    cols = [
        "routed",
        "single",
        "users",
        *RATIOS.values(),
        f"routed_{metric}",
        f"single_{metric}",
        "routed_wins",
    ]
    selected = [(r, s) for r, s in pairs(summary) if (routed in (None, r) and single in (None, s))]
    if routed and single and (routed, single) not in selected:
        known = sorted(summary["config"].unique())
        raise ValueError(f"cannot compare {routed!r} with {single!r}; configs in the summary: {known}")
    rows = []
    for r, s in selected:
        a = summary[summary["config"] == r].set_index("users")
        b = summary[summary["config"] == s].set_index("users")
        for users in sorted(set(a.index) & set(b.index)):
            ra, sb = a.loc[users], b.loc[users]
            row: dict[str, Any] = {"routed": r, "single": s, "users": int(users)}
            for src, dst in RATIOS.items():
                row[dst] = _ratio(float(ra.get(src, math.nan)), float(sb.get(src, math.nan)))
            row[f"routed_{metric}"], row[f"single_{metric}"] = float(ra[metric]), float(sb[metric])
            row["routed_wins"] = bool(ra[metric] > sb[metric])
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def crossover(cmp: pd.DataFrame, routed: str | None = None, single: str | None = None) -> int | str:
    """Smallest user count from which routed wins at every larger measured count too; else "never".

    Example: wins at (1: no, 10: yes, 50: yes) -> 10; (no, yes, no) -> "never" (a lead that does not hold
    at the highest load is not a crossover); all yes -> the smallest count.
    """
    sel = cmp
    if routed is not None:
        sel = sel[sel["routed"] == routed]
    if single is not None:
        sel = sel[sel["single"] == single]
    if sel[["routed", "single"]].drop_duplicates().shape[0] > 1:
        raise ValueError("crossover needs one (routed, single) pair; pass routed= and single=")
    sel = sel.sort_values("users")
    result: int | str = NEVER
    for users, wins in zip(
        reversed(sel["users"].tolist()), reversed(sel["routed_wins"].tolist()), strict=True
    ):
        if not wins:
            break
        result = int(users)
    return result


def _x(v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.1f}×" if v >= 1 else f"{v:.2f}×"


def _users(n: int) -> str:
    return f"{n:,} user" if n == 1 else f"{n:,} users"


def _num(v: float, unit: str, digits: int = 1) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:,.{digits}f} {unit}"


def findings(summary: pd.DataFrame, cmp: pd.DataFrame) -> list[str]:
    """Plain-English sentences computed from the summary and comparison (no fixed claims)."""
    out: list[str] = []
    if not pairs(summary):
        kinds = ", ".join(f"{c} ({t})" for c, t in summary[["config", "topology"]].drop_duplicates().values)
        out.append(f"No routed/single pair to compare: the results hold only {kinds or 'no configuration'}.")
    for r, s in pairs(summary):
        c = cmp[(cmp["routed"] == r) & (cmp["single"] == s)].sort_values("users")
        if c.empty:
            out.append(f"{r} and {s} share no user count, so they cannot be compared.")
            continue
        top = c.iloc[-1]
        u = int(top["users"])
        ra = summary[(summary["config"] == r) & (summary["users"] == u)].iloc[0]
        sb = summary[(summary["config"] == s) & (summary["users"] == u)].iloc[0]
        out.append(
            f"At {_users(u)} {r} served {_x(top['output_tps_x'])} the output tokens/s of {s} "
            f"({_num(ra['output_tps'], 'tok/s')} vs {_num(sb['output_tps'], 'tok/s')}) "
            f"at {_x(top['ttft_p99_x'])} its p99 TTFT ({_num(ra['ttft_p99_ms'], 'ms', 0)} vs "
            f"{_num(sb['ttft_p99_ms'], 'ms', 0)}) and {_x(top['e2e_p50_x'])} its median end-to-end latency."
        )
        x = crossover(c)
        won = [int(v) for v in c.loc[c["routed_wins"], "users"]]
        if x == NEVER:
            lead = f", although it led at {', '.join(map(str, won))} users" if won else ""
            out.append(f"{r} never overtakes {s} in output tokens/s up to {_users(u)}{lead}.")
        elif x == int(c["users"].iloc[0]):
            out.append(
                f"{r} delivers more output tokens/s than {s} at every user count measured ({x} to {u})."
            )
        else:
            out.append(f"{r} wins on output tokens/s from {_users(int(x))} on.")
        if np.isfinite(ra["goodput_rps"]) and np.isfinite(sb["goodput_rps"]):
            out.append(
                f"Goodput (requests/s meeting every SLO) at {_users(u)}: "
                f"{r} {_num(ra['goodput_rps'], 'req/s', 2)}, {s} {_num(sb['goodput_rps'], 'req/s', 2)}."
            )
        if np.isfinite(ra["expert_max_share"]) and ra["experts"] > 1:
            out.append(
                f"Routing balance at {_users(u)}: the busiest of {int(ra['experts'])} experts took "
                f"{ra['expert_max_share']:.0%} of {r}'s requests "
                f"(coefficient of variation {ra['expert_cv']:.2f})."
            )
        if np.isfinite(ra["gpu_util_pct"]) and np.isfinite(sb["gpu_util_pct"]):
            out.append(
                f"Mean GPU utilisation at {_users(u)}: "
                f"{r} {ra['gpu_util_pct']:.0f} %, {s} {sb['gpu_util_pct']:.0f} %."
            )
    worst = summary[summary["error_rate"] > 0].sort_values("error_rate", ascending=False)
    if len(worst):
        w = worst.iloc[0]
        out.append(
            f"Errors: {len(worst)} of {len(summary)} steps had failed requests; the worst, {w['config']} at "
            f"{_users(int(w['users']))}, failed {w['error_rate']:.1%}."
        )
    else:
        out.append("No request failed in any measured window.")
    if summary["ttft_error_p99_ms"].notna().any():
        p50 = summary["ttft_error_p50_ms"].max()
        p99 = summary["ttft_error_p99_ms"].max()
        out.append(
            f"Harness TTFT error against the simulator's ground truth: at most {p50:.1f} ms p50 and "
            f"{p99:.1f} ms p99 in any step."
        )
    return out
