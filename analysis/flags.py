"""Step flags: starved load generator, harness error over threshold, too few requests for a p99, errors, cuts.

A flagged configuration × load row is shown everywhere (console, summary.json, report) and kept out of the
headline claims (wins, crossover, saturation). `few_requests_p99` only keeps the row's p99 out of claims:
its throughput and medians stay usable.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

# Locust's own CPU warning: it fires only on a sustained overload, so one is enough to flag the step
_LOCUST_CPU_WARNING = re.compile(r"CPU usage above \d+%")
# our self-monitor's summary (loadtests/monitor.py): seconds with loop lag or CPU over its warning levels
_MONITOR_SECONDS = re.compile(r"self-monitor: .*?(\d+) second\(s\) over a warning threshold")
P99_ONLY = {"few_requests_p99"}  # flags that only disqualify the p99 figures


@dataclass(frozen=True)
class Thresholds:
    """The stated limits (docs/ANALYSIS.md, "Flags")."""

    # load generator starved or saturated: a record stamped with loop lag above lag_ms or CPU above cpu_pct
    lag_ms: float = 20.0  # the self-monitor's own warning level
    cpu_pct: float = 90.0  # Locust's warning level
    starved_share: float = 0.05  # ... on more than 5 % of the window's requests
    # harness TTFT error p99 (system path + return share) above max(floor, share of the step's TTFT p50)
    # (the claims need effects far larger: a difference smaller than the harness error is never a win)
    harness_floor_ms: float = 10.0
    harness_share_of_ttft_p50: float = 0.25
    min_requests_p99: int = 100  # fewer successful requests than 1 / (1 − 0.99): no observed p99 tail
    max_error_rate: float = 0.0  # any failed request
    # requests still running at the step end: more than max_cut_backlog x what Little's law expects from the
    # step's own throughput and mean E2E (a backlog building up), and more than min_cut_excess beyond it.
    # A plain cut share would flag every healthy step shorter than ~5 E2Es: in a steady state the share
    # open at the end is about E2E / window whatever the load.
    max_cut_backlog: float = 1.5
    min_cut_excess: int = 3

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT = Thresholds()


def _logs(step_dirs: list[str]) -> list[str]:
    out = []
    for d in step_dirs:
        try:
            out.append((Path(d) / "locust.log").read_text(errors="replace"))
        except OSError:
            continue
    return out


def log_warnings(step_dirs: list[str]) -> int:
    """Count Locust's CPU warnings in the steps' locust.log files."""
    return sum(len(_LOCUST_CPU_WARNING.findall(t)) for t in _logs(step_dirs))


def monitor_seconds(step_dirs: list[str]) -> float:
    """Seconds the self-monitor saw the load generator over its loop-lag or CPU warning level (summed)."""
    return float(sum(int(m) for t in _logs(step_dirs) for m in _MONITOR_SECONDS.findall(t)))


def starved_share(win: pd.DataFrame, th: Thresholds = DEFAULT) -> float:
    """Share of the window's records whose stamp shows a lagging or saturated load generator (NaN: none)."""
    if "outcome" in win:  # a cut record is stamped at the cut, i.e. during the load generator's shutdown
        win = win[win["outcome"] != "cut"]
    if win.empty:
        return math.nan
    lag = pd.to_numeric(win.get("client_loop_lag_ms"), errors="coerce")
    cpu = pd.to_numeric(win.get("client_cpu_percent"), errors="coerce")
    known = lag.notna() | cpu.notna()
    if not known.any():
        return math.nan
    bad = (lag > th.lag_ms) | (cpu > th.cpu_pct)
    return float(bad[known].mean())


def flags_for(row: dict[str, Any], starved: float, log_warns: int, th: Thresholds = DEFAULT) -> list[str]:
    """The flags of one summary row (see the module docstring); [] for a clean step."""
    out = []
    if (math.isfinite(starved) and starved > th.starved_share) or log_warns > 0:
        out.append("starved")
    err = float(row.get("harness_ttft_error_p99_ms", math.nan))
    ttft50 = float(row.get("ttft_p50_ms", math.nan))
    limit = max(th.harness_floor_ms, th.harness_share_of_ttft_p50 * ttft50 if math.isfinite(ttft50) else 0.0)
    if math.isfinite(err) and err > limit:
        out.append("harness_error")
    if float(row.get("requests", 0)) < th.min_requests_p99:
        out.append("few_requests_p99")
    if float(row.get("error_rate", 0) or 0) > th.max_error_rate:
        out.append("errors")
    cut, expected = float(row.get("cut", 0) or 0), float(row.get("cut_expected", math.nan))
    if not math.isfinite(expected):  # no completed request to set the steady state: any cut is a backlog
        expected = 0.0
    if cut > th.max_cut_backlog * expected and cut - expected > th.min_cut_excess:
        out.append("cuts")
    if float(row.get("requests", 0)) == 0:
        out.append("no_requests")
    return out


def add_flags(
    summary: pd.DataFrame, records: pd.DataFrame, steps: pd.DataFrame, th: Thresholds = DEFAULT
) -> pd.DataFrame:
    """`summary` with `flags` (list), `starved_share`, `locust_cpu_warnings` and `harness_limit_ms` "
    "columns."""
    out = summary.copy()
    flags, shares, warns, limits = [], [], [], []
    for _, row in out.iterrows():
        key = (records["config"] == row["config"]) & (records["load_kind"] == row["load_kind"])
        key &= records["load"] == row["load"]
        win = records[key & records["in_window"]] if len(records) else records
        skey = (steps["config"] == row["config"]) & (steps["load_kind"] == row["load_kind"])
        skey &= steps["load"] == row["load"]
        dirs = steps.loc[skey, "step_dir"].tolist()
        # the larger of: the share of the window's requests stamped with a lagging client, and the share of
        # the steps' seconds the self-monitor saw over its warning levels (one hiccup is not a starved step)
        share = starved_share(win, th)
        dur = float((steps.loc[skey, "end_ts"] - steps.loc[skey, "start_ts"]).clip(lower=0).sum())
        if dur > 0:
            mon = monitor_seconds(dirs) / dur
            share = mon if not math.isfinite(share) else max(share, mon)
        n_warn = log_warnings(dirs)
        ttft50 = float(row.get("ttft_p50_ms", math.nan))
        limits.append(
            max(th.harness_floor_ms, th.harness_share_of_ttft_p50 * ttft50 if ttft50 == ttft50 else 0)
        )
        flags.append(flags_for(row.to_dict(), share, n_warn, th))
        shares.append(share)
        warns.append(n_warn)
    out["flags"] = flags
    out["starved_share"] = shares
    out["locust_cpu_warnings"] = warns
    out["harness_limit_ms"] = limits
    return out


def usable(flags: list[str], p99: bool = False) -> bool:
    """May a row with these flags back a headline claim (a p99 claim when `p99`)?"""
    blocking = [f for f in flags if p99 or f not in P99_ONLY]
    return not blocking
