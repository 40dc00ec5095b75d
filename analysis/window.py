"""Output tokens generated inside a measurement window from per-chunk times (edge-crossing requests credited).

Contract 2 (docs/CONTRACTS.md): chunk k of a request arrived at `start_ts + ttft_s + sum(itl_s[:k])`; chunk
0 is the first content chunk. `chunk_tokens` (tokens per chunk) makes the count exact; without it the
request's `output_tokens` are spread evenly over its chunks. Every record counts, whatever its outcome: a
request cut at the step end or failing mid-stream still had its received tokens generated, and the engine's
own counter (`vllm:generation_tokens_total`) counts them too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

COUNTER = "vllm:generation_tokens_total"


def chunk_times_tokens(row: Any) -> tuple[np.ndarray, np.ndarray]:
    """(arrival times, tokens) of one record's content chunks; empty when it received none."""
    ttft = float(row["ttft_s"]) if row["ttft_s"] is not None else math.nan
    start = float(row["start_ts"])
    if not (math.isfinite(ttft) and math.isfinite(start)):
        return np.empty(0), np.empty(0)
    gaps = np.asarray(row["itl_s"] if isinstance(row["itl_s"], list | tuple) else [], dtype=float)
    times = start + ttft + np.concatenate([[0.0], np.cumsum(gaps)])
    n = times.size
    given = row.get("chunk_tokens") if hasattr(row, "get") else None
    if isinstance(given, list | tuple) and len(given) == n:
        tokens = np.asarray(given, dtype=float)
    else:
        total = max(int(row["output_tokens"]), 0)
        tokens = np.full(n, total / n) if total else np.zeros(n)
    return times, tokens


def tokens_in_window(records: pd.DataFrame, window_start: float, window_end: float) -> float:
    """Output tokens whose chunk arrived inside [window_start, window_end], over all records given."""
    total = 0.0
    for row in records.to_dict("records"):
        times, tokens = chunk_times_tokens(row)
        if times.size:
            total += float(tokens[(times >= window_start) & (times <= window_end)].sum())
    return total


def windowed_output_tps(records: pd.DataFrame, window_start: float, window_end: float) -> float:
    """Output tokens/s generated inside the window (tokens_in_window / window length); NaN for no window."""
    span = window_end - window_start
    return tokens_in_window(records, window_start, window_end) / span if span > 0 else math.nan


def request_window_tokens(records: pd.DataFrame, window_start: float, window_end: float) -> np.ndarray:
    """Per record, its in-window tokens (the unit the bootstrap resamples)."""
    out = np.zeros(len(records))
    for i, row in enumerate(records.to_dict("records")):
        times, tokens = chunk_times_tokens(row)
        if times.size:
            out[i] = float(tokens[(times >= window_start) & (times <= window_end)].sum())
    return out


def n_blocks(window_s: float) -> int:
    """Time blocks for the rate bootstrap: about one per second, at least 8, at most 30."""
    return int(min(30, max(8, math.floor(window_s)))) if window_s > 0 else 1


def token_blocks(records: pd.DataFrame, window_start: float, window_end: float, blocks: int) -> np.ndarray:
    """In-window output tokens per equal time block of the window (the unit the rate bootstrap resamples)."""
    out = np.zeros(blocks)
    span = window_end - window_start
    if span <= 0:
        return out
    for row in records.to_dict("records"):
        times, tokens = chunk_times_tokens(row)
        inside = (times >= window_start) & (times <= window_end)
        if inside.any():
            idx = np.minimum(((times[inside] - window_start) / span * blocks).astype(int), blocks - 1)
            np.add.at(out, idx, tokens[inside])
    return out


def event_blocks(
    ts: np.ndarray, weights: np.ndarray, window_start: float, window_end: float, blocks: int
) -> np.ndarray:
    """Sum of `weights` of events at times `ts` per time block of the window (events outside are dropped)."""
    out = np.zeros(blocks)
    span = window_end - window_start
    ts, weights = np.asarray(ts, dtype=float), np.asarray(weights, dtype=float)
    inside = (ts >= window_start) & (ts <= window_end) & np.isfinite(weights)
    if span > 0 and inside.any():
        idx = np.minimum(((ts[inside] - window_start) / span * blocks).astype(int), blocks - 1)
        np.add.at(out, idx, weights[inside])
    return out


def counter_at(ts: Sequence[float], values: Sequence[float], t: float) -> float:
    """A cumulative counter's value at time t by linear interpolation between scrapes (NaN outside them)."""
    x, y = np.asarray(ts, dtype=float), np.asarray(values, dtype=float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if x.size == 0 or t < x[0] or t > x[-1]:
        return math.nan
    return float(np.interp(t, x, y))


def engine_tokens_in_window(
    metrics: pd.DataFrame, window_start: float, window_end: float, counter: str = COUNTER
) -> float:
    """Tokens the engines themselves counted in the window: Σ over targets of counter(end) − counter(start).

    `metrics` is one step's metrics.csv (all samples, not only in-window ones: the interpolation needs the
    scrapes on both sides of each edge). NaN when some engine has no scrape around an edge.
    """
    sel = metrics[metrics["metric"] == counter]
    if sel.empty:
        return math.nan
    total = 0.0
    for _, g in sel.groupby("target"):
        # one series per target (labels differ only by model name on one engine)
        ts = pd.to_numeric(g["ts"], errors="coerce").to_numpy()
        val = pd.to_numeric(g["value"], errors="coerce").to_numpy()
        a, b = counter_at(ts, val, window_start), counter_at(ts, val, window_end)
        if not (math.isfinite(a) and math.isfinite(b)):
            return math.nan
        total += b - a
    return total


def scraped_span(metrics: pd.DataFrame, counter: str = COUNTER) -> tuple[float, float]:
    """(latest first scrape, earliest last scrape) of `counter` over the targets: where every engine "
    "is known."""
    sel = metrics[metrics["metric"] == counter]
    if sel.empty:
        return (math.nan, math.nan)
    ts = pd.to_numeric(sel["ts"], errors="coerce").groupby(sel["target"])
    return (float(ts.min().max()), float(ts.max().min()))


def engine_check(records: pd.DataFrame, metrics: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """Per step: client tokens vs the engines' counter over the same interval, and the relative gap.

    The interval is the step's window clipped to the span the counter was scraped in (the samplers stop a
    moment before the step's end_ts), so both sides count the same seconds. Columns: config, load_kind, load,
    rep, check_start, check_s, client_tokens, engine_tokens, rel_diff (client / engine − 1), completed_tokens
    (the old count: tokens of requests that completed in the interval, for comparison).
    """
    rows = []
    for _, st in steps.iterrows():
        key = (records["run_id"] == st["run_id"]) & (records["config"] == st["config"])
        key &= (records["load_kind"] == st["load_kind"]) & (records["load"] == st["load"])
        recs = records[key & (records["rep"] == st["rep"])]
        met = metrics
        if len(metrics):
            mkey = (metrics["run_id"] == st["run_id"]) & (metrics["config"] == st["config"])
            mkey &= (metrics["load_kind"] == st["load_kind"]) & (metrics["load"] == st["load"])
            met = metrics[mkey & (metrics["rep"] == st["rep"])]
        first, last = scraped_span(met) if len(met) else (math.nan, math.nan)
        ws = max(float(st["window_start"]), first) if math.isfinite(first) else float(st["window_start"])
        we = min(float(st["window_end"]), last) if math.isfinite(last) else float(st["window_end"])
        client = tokens_in_window(recs, ws, we)
        engine = engine_tokens_in_window(met, ws, we) if len(met) else math.nan
        ends = pd.to_numeric(recs["end_ts"], errors="coerce")
        done = recs[(ends >= ws) & (ends <= we) & recs["success"]]["output_tokens"].clip(lower=0).sum()
        rows.append(
            {
                "config": st["config"],
                "load_kind": st["load_kind"],
                "load": float(st["load"]),
                "rep": int(st["rep"]),
                "check_start": ws,
                "check_s": we - ws,
                "client_tokens": client,
                "engine_tokens": engine,
                "rel_diff": client / engine - 1.0 if engine and math.isfinite(engine) else math.nan,
                "completed_tokens": float(done),
            }
        )
    return pd.DataFrame(rows)
