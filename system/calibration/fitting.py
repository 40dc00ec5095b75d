"""Fit sim profile parameters to measured closed-loop steps: replay each step, minimise the MAPE."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy.optimize import minimize

from system.calibration.replay import simulate_closed_loop
from system.engines.sim.profiles import Profile

METRICS = ("ttft_p50_s", "tpot_p50_s", "output_tps")
CLIENT = "client_overhead_s"  # not a profile field: the harness' and the engine's per-request latency
# fit parameters -> (lower, upper) bounds; searched in log space, so 0 is approached, never reached
BOUNDS: dict[str, tuple[float, float]] = {
    "step_overhead_s": (1e-6, 2.0),
    "per_seq_overhead_s": (1e-8, 0.2),
    "per_token_overhead_s": (1e-9, 0.05),
    "per_request_overhead_s": (1e-7, 1.0),
    "compute_eff": (1e-3, 1.0),
    "memory_eff": (1e-3, 1.0),
    CLIENT: (1e-6, 1.0),
}
DISCRETE = ("max_num_seqs",)  # searched on a grid, each value with its own continuous fit
TIE = 0.005  # grid choices within half a MAPE point of the best count as equally good
DEFAULT_PARAMS = (
    "step_overhead_s",
    "per_seq_overhead_s",
    "per_token_overhead_s",
    "per_request_overhead_s",
    CLIENT,
)


@dataclass(frozen=True)
class MeasuredPoint:
    """One measured closed-loop step (NaN: not measured; left out of the error)."""

    users: int
    ttft_p50_s: float = math.nan
    tpot_p50_s: float = math.nan
    output_tps: float = math.nan
    requests: float = math.nan
    client_gap_s: float = 0.0  # measured time between a user's response end and its next request
    spawn_rate: float | None = None  # users started per second (Locust's ramp); None: all at once


@dataclass(frozen=True)
class FitWorkload:
    """What the users sent: (prompt, output[, engine]) samples and the step timing of the measurement."""

    pairs: tuple[tuple[int, ...], ...]
    duration_s: float
    warmup_s: float
    spawn_rate: float | None = None
    seed: int = 0
    # replay only until this many requests ended in the window (None: the whole step); fitting is many
    # replays, and a stationary closed loop's p50s and rate settle after a few hundred requests
    target_requests: int | None = 400
    # per-request spread of the client overhead (replay.simulate_closed_loop): breaks the synchronized
    # waves a perfectly regular closed loop falls into, which real clients and hosts never keep up
    client_jitter: float = 1.0
    # replays per step with seeds seed, seed+1, ...; their summaries are averaged (a smoother objective)
    n_seeds: int = 1


def simulate_points(
    profile: Profile | Sequence[Profile],
    points: Sequence[MeasuredPoint],
    workload: FitWorkload,
    client_overhead_s: float = 0.0,
) -> list[dict[str, float]]:
    """Replay summary (METRICS, requests) of each measured step's user count, gap and ramp; with
    `workload.n_seeds` > 1 the mean of that many seeded replays."""
    out = []
    for pt in points:
        runs = [
            simulate_closed_loop(
                profile,
                pt.users,
                workload.pairs,
                workload.duration_s,
                workload.warmup_s,
                client_overhead_s=client_overhead_s,
                client_gap_s=pt.client_gap_s,
                client_jitter=workload.client_jitter,
                spawn_rate=pt.spawn_rate if pt.spawn_rate else workload.spawn_rate,
                seed=workload.seed + k,
                target_requests=workload.target_requests,
            ).summary()
            for k in range(max(1, workload.n_seeds))
        ]
        mean = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
        # compare measured tokens/s with the replay's smooth token rate (replay.ReplayResult.summary)
        mean["output_tps"] = mean["token_tps"]
        out.append(mean)
    return out


def error_table(
    points: Sequence[MeasuredPoint], simulated: Sequence[dict[str, float]]
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Per-step rows (measured, simulated, APE per metric) and MAPE per metric + `overall` (the mean APE over
    every measured metric × step pair). A simulated NaN (no request ended) scores an APE of 1."""
    rows: list[dict[str, float]] = []
    apes: dict[str, list[float]] = {m: [] for m in METRICS}
    for pt, sim in zip(points, simulated, strict=True):
        row: dict[str, float] = {"users": pt.users}
        for m in METRICS:
            meas = getattr(pt, m)
            row[f"measured_{m}"] = meas
            row[f"sim_{m}"] = sim[m]
            if math.isfinite(meas) and meas > 0:
                ape = abs(sim[m] - meas) / meas if math.isfinite(sim[m]) else 1.0
                row[f"ape_{m}"] = ape
                apes[m].append(ape)
            else:
                row[f"ape_{m}"] = math.nan
        rows.append(row)
    mape = {m: float(np.mean(v)) if v else math.nan for m, v in apes.items()}
    every = [a for v in apes.values() for a in v]
    mape["overall"] = float(np.mean(every)) if every else math.nan
    return rows, mape


def apply_params(base: Profile, values: dict[str, float]) -> tuple[Profile, float]:
    """(profile with the profile fields set, client overhead) from fitted values."""
    fields_ = {k: v for k, v in values.items() if k != CLIENT}
    if "max_num_seqs" in fields_:
        fields_["max_num_seqs"] = int(fields_["max_num_seqs"])
    return replace(base, **fields_), float(values.get(CLIENT, 0.0))  # type: ignore[arg-type]


@dataclass
class FitResult:
    profile: Profile
    client_overhead_s: float
    params: dict[str, float]
    mape: dict[str, float]
    fit_mape: float
    rows: list[dict[str, float]]
    evals: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # best per discrete choice


def _initial(
    base: Profile, names: Sequence[str], client: float, points: Sequence[MeasuredPoint]
) -> np.ndarray:
    """Starting values: the base profile's, or for a zero overhead a scale read off the data (the smallest
    measured TPOT is about one step of the smallest batch)."""
    tpots = [p.tpot_p50_s for p in points if math.isfinite(p.tpot_p50_s)]
    tps1 = [p.users / p.output_tps for p in points if math.isfinite(p.output_tps) and p.output_tps > 0]
    step = min(tpots) if tpots else (min(tps1) if tps1 else 1e-2)
    guess = {
        "step_overhead_s": step / 2,
        "per_seq_overhead_s": step / 20,
        "per_token_overhead_s": step / 200,
        "per_request_overhead_s": step,
        CLIENT: step,
    }
    x = []
    for n in names:
        v = client if n == CLIENT else float(getattr(base, n))
        if v <= 0:
            v = guess.get(n, 1e-3)
        lo, hi = BOUNDS[n]
        x.append(math.log10(min(max(v, lo), hi)))
    return np.array(x)


def fit_profile(
    base: Profile,
    points: Sequence[MeasuredPoint],
    workload: FitWorkload,
    params: Sequence[str] = DEFAULT_PARAMS,
    *,
    client_overhead_s: float = 0.0,
    engines: int = 1,
    seqs_grid: Sequence[int] | None = None,
    n_random: int = 32,
    n_starts: int = 3,
    max_evals: int = 300,
    seed: int = 0,
    eval_seeds: int = 4,
) -> FitResult:
    """Minimise the overall MAPE (TTFT p50, TPOT p50, output tokens/s × steps) over `params`.

    Derivative-free and robust to the replay's step-function response: `n_random` log-uniform samples in a
    box of ×/÷100 around the start (within BOUNDS), then Nelder-Mead in log10 space from the `n_starts`
    best. `max_num_seqs` in `params` is searched over `seqs_grid` (default: powers of two up to the largest
    user count, plus the base value), each with its own continuous fit; of choices within TIE of the best,
    the largest max_num_seqs wins. `engines` > 1 replays a routed
    stack of that many identical engines (workload triples name the engine).
    The returned rows and MAPE are re-evaluated on `eval_seeds` replays of whole steps with seeds the
    search never saw (the search's own best value is `fit_mape`), so a lucky alignment of one seed's
    closed loop does not pass for accuracy.
    """
    unknown = [p for p in params if p not in BOUNDS and p not in DISCRETE]
    if unknown:
        raise ValueError(f"unknown fit parameter(s) {unknown}; known: {[*BOUNDS, *DISCRETE]}")
    if not points:
        raise ValueError("no measured points to fit")
    cont = [p for p in params if p in BOUNDS]
    users = [p.users for p in points]
    t0 = time.perf_counter()
    evals = 0
    rng = np.random.default_rng(seed)

    def score(prof: Profile, client: float) -> float:
        nonlocal evals
        evals += 1
        profs = [prof] * engines if engines > 1 else prof
        return error_table(points, simulate_points(profs, points, workload, client))[1]["overall"]

    warm: list[np.ndarray] = []

    def fit_continuous(b: Profile) -> tuple[dict[str, float], float]:
        if not cont:
            return {}, score(b, client_overhead_s)
        lo = np.log10([BOUNDS[n][0] for n in cont])
        hi = np.log10([BOUNDS[n][1] for n in cont])

        def f(x: np.ndarray) -> float:
            vals = dict(zip(cont, (10.0 ** np.clip(x, lo, hi)).tolist(), strict=True))
            prof, client = apply_params(b, {CLIENT: client_overhead_s, **vals})
            # outside the box: the clipped value's score plus a slope back towards it
            return score(prof, client) + float(np.sum(np.abs(x - np.clip(x, lo, hi))))

        x0 = _initial(b, cont, client_overhead_s, points)
        cands = [x0, *warm] + [
            np.clip(x0 + rng.uniform(-2.0, 2.0, size=len(cont)), lo, hi) for _ in range(n_random)
        ]
        scored = sorted(((f(x), i, x) for i, x in enumerate(cands)), key=lambda t: (t[0], t[1]))
        best_f, _, best_x = scored[0]
        per_start = max(20, (max_evals - len(cands)) // max(1, n_starts))
        nm = {"maxfev": per_start, "xatol": 1e-3, "fatol": 1e-5}
        for _f, _, x in scored[:n_starts]:
            res = minimize(f, x, method="Nelder-Mead", options={**nm, "initial_simplex": _simplex(x)})
            if res.fun < best_f:
                best_f, best_x = float(res.fun), res.x
        # one restart from the best with a smaller simplex: Nelder-Mead stalls on a rugged objective
        res = minimize(
            f, best_x, method="Nelder-Mead", options={**nm, "initial_simplex": _simplex(best_x, 0.15)}
        )
        if res.fun < best_f:
            best_f, best_x = float(res.fun), res.x
        best_x = np.clip(best_x, lo, hi)
        warm.append(best_x)  # the next grid choice also starts from here
        return dict(zip(cont, (10.0**best_x).tolist(), strict=True)), best_f

    history: list[dict[str, Any]] = []
    choices: list[dict[str, float]] = [{}]
    if "max_num_seqs" in params:
        grid = seqs_grid or sorted(
            {base.max_num_seqs, *(2**k for k in range(int(math.log2(max(users))) + 1))}
        )
        choices = [{"max_num_seqs": float(s)} for s in grid]
    for choice in choices:
        b, _ = apply_params(base, choice)
        vals, fval = fit_continuous(b)
        history.append({**choice, **vals, "overall_mape": fval})
    # grid choices that fit within TIE of the best are indistinguishable by the data: take the largest
    # max_num_seqs among them (the least restrictive cap, nearest the engine's configured limit)
    top = min(h["overall_mape"] for h in history)
    tied = [h for h in history if h["overall_mape"] <= top + TIE]
    pick = max(tied, key=lambda h: h.get("max_num_seqs", 0.0))
    best = (pick["overall_mape"], {k: v for k, v in pick.items() if k != "overall_mape"})
    values = best[1]
    prof, client = apply_params(base, {CLIENT: client_overhead_s, **values})
    profs = [prof] * engines if engines > 1 else prof
    held_out = replace(workload, seed=workload.seed + 1000, n_seeds=eval_seeds, target_requests=None)
    rows, mape = error_table(points, simulate_points(profs, points, held_out, client))
    return FitResult(
        profile=prof,
        client_overhead_s=client,
        params={k: values[k] for k in values},
        mape=mape,
        fit_mape=best[0],
        rows=rows,
        evals=evals,
        seconds=time.perf_counter() - t0,
        history=history,
    )


def _simplex(x: np.ndarray, step: float = 0.5) -> np.ndarray:
    """Nelder-Mead's first simplex: ×3 (0.5 decades) along each axis, so it explores beyond the start."""
    pts = [x]
    for i in range(len(x)):
        y = x.copy()
        y[i] += step
        pts.append(y)
    return np.array(pts)
