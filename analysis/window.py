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

import numpy as np
import pandas as pd

COUNTER = "vllm:generation_tokens_total"


def chunk_arrays(records: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(arrival time, tokens) of every content chunk of every record, flattened (vectorised)."""
    if records.empty:
        return np.empty(0), np.empty(0)
    start = pd.to_numeric(records["start_ts"], errors="coerce").to_numpy(dtype=float)
    ttft = pd.to_numeric(records["ttft_s"], errors="coerce").to_numpy(dtype=float)
    valid = np.isfinite(start) & np.isfinite(ttft)
    itl = [x if isinstance(x, list | tuple) else [] for x in records["itl_s"].tolist()]
    n = np.array([len(x) + 1 for x in itl]) * valid
    if not n.sum():
        return np.empty(0), np.empty(0)
    gaps = np.fromiter(
        (g for x, ok in zip(itl, valid, strict=True) if ok for g in (0.0, *x)),
        dtype=float,
        count=int(n.sum()),
    )
    cs = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(n)[:-1]])[n > 0]
    times = np.repeat((start + ttft)[n > 0], n[n > 0]) + cs - np.repeat(cs[first], n[n > 0])
    out = np.repeat(
        pd.to_numeric(records["output_tokens"], errors="coerce").fillna(0).clip(lower=0).to_numpy(), n
    )
    tokens = out / np.repeat(np.maximum(n, 1), n)  # even spread by default
    if "chunk_tokens" in records:
        pos = 0
        for given, k in zip(records["chunk_tokens"].tolist(), n, strict=True):
            if k and isinstance(given, list | tuple) and len(given) == k:
                tokens[pos : pos + k] = np.asarray(given, dtype=float)
            pos += k
    return times, tokens


def tokens_in_window(records: pd.DataFrame, window_start: float, window_end: float) -> float:
    """Output tokens whose chunk arrived inside [window_start, window_end], over all records given."""
    times, tokens = chunk_arrays(records)
    return float(tokens[(times >= window_start) & (times <= window_end)].sum())


def windowed_output_tps(records: pd.DataFrame, window_start: float, window_end: float) -> float:
    """Output tokens/s generated inside the window (tokens_in_window / window length); NaN for no window."""
    span = window_end - window_start
    return tokens_in_window(records, window_start, window_end) / span if span > 0 else math.nan


def n_blocks(window_s: float) -> int:
    """Time blocks for the rate bootstrap: about one per second, at least 8, at most 30."""
    return int(min(30, max(8, math.floor(window_s)))) if window_s > 0 else 1


def token_blocks(records: pd.DataFrame, window_start: float, window_end: float, blocks: int) -> np.ndarray:
    """In-window output tokens per equal time block of the window (the unit the rate bootstrap resamples)."""
    times, tokens = chunk_arrays(records)
    return event_blocks(times, tokens, window_start, window_end, blocks)


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
