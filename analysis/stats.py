"""Bootstrap confidence intervals: within a step, and over repetitions when there are >= 2.

One resample of a configuration × load draws repetitions with replacement (only when there are at least two),
then draws units with replacement inside each drawn repetition. For a percentile the units are requests and
the statistic pools the drawn requests of the drawn repetitions. For a rate (tok/s, goodput) the units are
equal time blocks of the window, each holding the tokens (or good completions) that fell in it: resampling
requests would keep their number fixed and give goodput a zero-width interval whenever every request meets
the SLOs. The rate is the mean over the drawn repetitions of (sum of the drawn blocks / that
window). The 95 % interval is the 2.5th–97.5th percentile of the
resampled statistic (percentile bootstrap). Seeds derive from the group's name, so a report is reproducible.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class RepData:
    """One repetition's per-request values of one metric and its window length (s)."""

    values: np.ndarray
    window_s: float = math.nan


def seed_for(*parts: object) -> int:
    """A stable seed from the group's identity (config, load kind, load, metric)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def _finite(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    return a[np.isfinite(a)]


def rate_point(reps: Sequence[RepData]) -> float:
    """Mean over repetitions of sum(values) / window."""
    vals = [float(_finite(r.values).sum()) / r.window_s for r in reps if r.window_s > 0]
    return float(np.mean(vals)) if vals else math.nan


def percentile_point(reps: Sequence[RepData], q: float) -> float:
    """Percentile q (linear interpolation, as numpy/vLLM bench) of the pooled finite values."""
    pooled = np.concatenate([_finite(r.values) for r in reps]) if reps else np.empty(0)
    return float(np.percentile(pooled, q)) if pooled.size else math.nan


def _draw(reps: Sequence[RepData], rng: np.random.Generator) -> list[RepData]:
    chosen = [reps[i] for i in rng.integers(0, len(reps), len(reps))] if len(reps) >= 2 else list(reps)
    out = []
    for r in chosen:
        n = r.values.size
        out.append(RepData(r.values[rng.integers(0, n, n)] if n else r.values, r.window_s))
    return out


def bootstrap(
    reps: Sequence[RepData],
    statistic: Callable[[Sequence[RepData]], float],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> np.ndarray:
    """The bootstrap distribution (n_boot values, NaN-free when defined) of `statistic` over `reps`."""
    reps = [RepData(np.asarray(r.values, dtype=float), r.window_s) for r in reps]
    if not reps or all(r.values.size == 0 for r in reps):
        return np.full(n_boot, math.nan)
    rng = np.random.default_rng(seed)
    return np.array([statistic(_draw(reps, rng)) for _ in range(n_boot)], dtype=float)


def ci(dist: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """(lo, hi) percentile interval of a bootstrap distribution; (NaN, NaN) when it is undefined."""
    d = _finite(dist)
    if d.size < max(10, dist.size // 2):  # mostly undefined (e.g. too few requests): no interval
        return (math.nan, math.nan)
    tail = (1.0 - level) / 2.0 * 100.0
    return (float(np.percentile(d, tail)), float(np.percentile(d, 100.0 - tail)))


def rate_ci(reps: Sequence[RepData], n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, np.ndarray]:
    """(point estimate, bootstrap distribution) of a per-window rate (vectorised `bootstrap` scheme)."""
    point = rate_point(reps)
    reps = [RepData(_finite(r.values), r.window_s) for r in reps if r.window_s > 0]
    if not reps or all(r.values.size == 0 for r in reps):
        return point, np.full(n_boot, math.nan)
    rng = np.random.default_rng(seed)
    k = len(reps)
    chosen = rng.integers(0, k, (n_boot, k)) if k >= 2 else np.zeros((n_boot, 1), dtype=int)
    # per repetition, an independent resampled sum for every (resample, position) it may be drawn into
    sums = np.zeros((k, n_boot, chosen.shape[1]))
    for j, r in enumerate(reps):
        n = r.values.size
        if n:
            draws = r.values[rng.integers(0, n, (n_boot, chosen.shape[1], n))]
            sums[j] = draws.sum(axis=2) / r.window_s
    rows = np.arange(n_boot)[:, None]
    cols = np.arange(chosen.shape[1])[None, :]
    return point, sums[chosen, rows, cols].mean(axis=1)


def percentile_ci(
    reps: Sequence[RepData], q: float, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[float, np.ndarray]:
    """(point estimate, bootstrap distribution) of a pooled percentile (vectorised; same scheme as bootstrap).

    Resamples that drew the same multiset of repetitions pool the same number of requests, so each such
    group is one matrix of draws.
    """
    point = percentile_point(reps, q)
    arrays = [_finite(r.values) for r in reps]
    if not arrays or all(a.size == 0 for a in arrays):
        return point, np.full(n_boot, math.nan)
    rng = np.random.default_rng(seed)
    k = len(arrays)
    chosen = np.sort(rng.integers(0, k, (n_boot, k)), axis=1) if k >= 2 else np.zeros((n_boot, 1), dtype=int)
    out = np.full(n_boot, math.nan)
    keys, inverse = np.unique(chosen, axis=0, return_inverse=True)
    for g, key in enumerate(keys):
        idx = np.flatnonzero(inverse.ravel() == g)
        parts = [arrays[j] for j in key if arrays[j].size]
        if not parts:
            continue
        size = sum(a.size for a in parts)
        chunk = max(1, 2_000_000 // size)  # bound the draw matrix's memory
        for i in range(0, idx.size, chunk):
            sel = idx[i : i + chunk]
            pooled = np.concatenate([a[rng.integers(0, a.size, (sel.size, a.size))] for a in parts], axis=1)
            out[sel] = np.percentile(pooled, q, axis=1)
    return point, out


def diff_ci(dist_a: np.ndarray, dist_b: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """CI of A − B from two independent bootstrap distributions of equal length."""
    n = min(dist_a.size, dist_b.size)
    return ci(np.asarray(dist_a[:n]) - np.asarray(dist_b[:n]), level)


def distinguishable(lo: float, hi: float, diff: float, harness_error: float = 0.0) -> bool:
    """A difference counts only when its CI excludes zero and it is larger than the harness error."""
    if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(diff)):
        return False
    if lo <= 0.0 <= hi:
        return False
    err = harness_error if math.isfinite(harness_error) else 0.0
    return abs(diff) > abs(err)
