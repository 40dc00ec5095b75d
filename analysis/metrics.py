"""Per configuration × load summaries: throughput, latency percentiles, goodput, GPU, routing, harness error.

Definitions (docs/ANALYSIS.md): a request belongs to a step's measurement window when it *ended* inside
[start_ts + warmup_s, end_ts]. Rates (throughput, goodput) are computed per repetition over that window and
averaged over repetitions; distributions (percentiles) and proportions (error rate, expert shares) pool the
window's requests of all repetitions. `tok_per_s` instead counts the output tokens *generated* inside the
window from per-chunk times (analysis.window), which is what the engine's own counter measures.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import KEYS, expert_names
from analysis.window import tokens_in_window

PERCENTILES = (50, 90, 99)
# a step's load: kind ("users" | "rate") and value; `users` rides along (NaN for rate steps)
GROUP = ["config", "topology", "load_kind", "load"]
# SLO keys we accept (the runner's SLOs model uses *_ms; *_s is accepted too) -> record column in seconds
SLO_COLUMNS = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s"}


def percentile(values: Iterable[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default, as vLLM bench) of the finite values; NaN if none."""
    a = np.asarray(list(values) if not isinstance(values, np.ndarray | pd.Series) else values, dtype=float)
    a = a[np.isfinite(a)]
    return float(np.percentile(a, q)) if a.size else float("nan")


def latency_stats(values: Iterable[float], prefix: str, scale: float = 1000.0) -> dict[str, float]:
    """{prefix_mean_ms, prefix_p50_ms, prefix_p90_ms, prefix_p99_ms} from values in seconds."""
    a = np.asarray(list(values) if not isinstance(values, np.ndarray | pd.Series) else values, dtype=float)
    a = a[np.isfinite(a)]
    out = {f"{prefix}_mean_ms": float(a.mean() * scale) if a.size else float("nan")}
    for q in PERCENTILES:
        out[f"{prefix}_p{q}_ms"] = percentile(a, q) * scale
    return out


def normalize_slos(raw: Mapping[str, Any] | None) -> dict[str, float]:
    """{"ttft"|"tpot"|"e2e": seconds} from {"ttft_ms": 500, "tpot_s": 0.05, "e2el_ms": 2000, ...}.

    Bare names ("ttft") are taken as already normalised (seconds), so normalising twice changes nothing.
    """
    out: dict[str, float] = {}
    for key, value in (raw or {}).items():
        if value is None:
            continue
        k = key.lower()
        name = k.removesuffix("_ms").removesuffix("_s")
        name = "e2e" if name in ("e2el", "e2e_latency") else name  # vLLM bench calls it e2el
        if name not in SLO_COLUMNS:
            raise ValueError(f"unknown SLO {key!r}; known: ttft, tpot, e2e (suffix _ms or _s)")
        out[name] = float(value) / 1000.0 if k.endswith("_ms") else float(value)
    return out


def slos_from_manifest(manifest: Mapping[str, Any]) -> dict[str, float]:
    """SLOs of the resolved experiment config in a manifest (key "config" or "experiment", or top level)."""
    for key in ("config", "experiment", "resolved_config"):
        sub = manifest.get(key)
        if isinstance(sub, dict) and isinstance(sub.get("slos"), dict):
            return normalize_slos(sub["slos"])
    return normalize_slos(manifest.get("slos") if isinstance(manifest.get("slos"), dict) else None)


def meets_slos(df: pd.DataFrame, slos: Mapping[str, float]) -> pd.Series:
    """True for successful requests meeting every SLO (seconds); a NaN TPOT (one output token) meets TPOT."""
    ok = df["success"].astype(bool).copy()
    for name, limit in slos.items():
        col = pd.to_numeric(df[SLO_COLUMNS[name]], errors="coerce")
        ok &= (col <= limit) | (col.isna() if name == "tpot" else False)
    return ok


def _step_rates(
    win: pd.DataFrame, window_s: float, slos: Mapping[str, float], tokens_in_window: float = float("nan")
) -> dict[str, float]:
    ok = win[win["success"]]
    if not window_s > 0:
        nan = float("nan")
        return {"throughput_rps": nan, "output_tps": nan, "goodput_rps": nan, "tok_per_s": nan}
    return {
        "throughput_rps": len(ok) / window_s,
        "output_tps": float(ok["output_tokens"].clip(lower=0).sum()) / window_s,
        "goodput_rps": float(meets_slos(ok, slos).sum()) / window_s if slos else float("nan"),
        "tok_per_s": tokens_in_window / window_s,
    }


def _mean_of(frame: pd.DataFrame, ts_groups: bool, col: str) -> float:
    if frame.empty or col not in frame:
        return float("nan")
    vals = pd.to_numeric(frame[col], errors="coerce")
    if ts_groups:  # sum across GPUs per sample time, then mean over time (total memory / power of the box)
        return float(vals.groupby(frame["ts"]).sum(min_count=1).mean())
    return float(vals.mean())


def _gpu_stats(gpu: pd.DataFrame) -> dict[str, float]:
    win = gpu[gpu["in_window"]] if len(gpu) else gpu
    mem = _mean_of(win, True, "mem_used_mb")
    return {
        "gpu_count": float(win["gpu"].nunique()) if len(win) else float("nan"),
        "gpu_util_pct": _mean_of(win, False, "util_pct"),
        "gpu_mem_used_gib": mem / 1024.0,
        "gpu_power_w": _mean_of(win, True, "power_w"),
    }


def _engine_stats(metrics: pd.DataFrame) -> dict[str, float]:
    out = {
        "engine_running_mean": float("nan"),
        "engine_waiting_mean": float("nan"),
        "kv_cache_usage_mean": float("nan"),
    }
    if metrics.empty:
        return out
    win = metrics[metrics["in_window"]]
    names = {
        "engine_running_mean": ("vllm:num_requests_running",),
        "engine_waiting_mean": ("vllm:num_requests_waiting",),
        "kv_cache_usage_mean": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    }
    for key, metric_names in names.items():
        sel = win[win["metric"].isin(metric_names)]
        if sel.empty:
            continue
        per_target = pd.to_numeric(sel["value"], errors="coerce").groupby(sel["target"]).mean()
        # queues add up across engines; cache usage is a fraction per engine, so average it
        out[key] = float(per_target.mean() if key == "kv_cache_usage_mean" else per_target.sum())
    return out


def expert_balance(df: pd.DataFrame, configs: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Requests per expert in the window (all reps pooled): config, topology, users, expert, requests, share.

    Experts named in config.json that received nothing appear with 0, so imbalance is not hidden.
    """
    cols = [*GROUP, "users", "expert", "requests", "share"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    win = df[df["in_window"]]
    rows = []
    for (config, topology, kind, load), g in win.groupby(GROUP, sort=True):
        counts = g.loc[g["expert"] != "", "expert"].value_counts()
        names = expert_names(dict((configs or {}).get(config, {})))
        names += sorted(set(counts.index) - set(names))
        total = int(counts.sum())
        users = _users_value(kind, load)
        for name in names:
            n = int(counts.get(name, 0))
            rows.append([config, topology, kind, load, users, name, n, n / total if total else float("nan")])
    return _int_users(pd.DataFrame(rows, columns=cols))


def _users_value(kind: str, load: float) -> float:
    return float(load) if kind == "users" else float("nan")


def _int_users(df: pd.DataFrame) -> pd.DataFrame:
    """`users` as int when every row is a closed-loop step (old reports, plots and tests key on it)."""
    if "users" in df and len(df) and df["users"].notna().all():
        df["users"] = df["users"].astype("int64")
    return df


def _balance_stats(balance: pd.DataFrame) -> dict[str, float]:
    if balance.empty or balance["requests"].sum() == 0:
        return {"experts": float(len(balance)), "expert_cv": float("nan"), "expert_max_share": float("nan")}
    n = balance["requests"].to_numpy(dtype=float)
    # coefficient of variation with the population std: 0 = perfectly even, sqrt(k-1) = all on one expert
    return {
        "experts": float(len(n)),
        "expert_cv": float(n.std() / n.mean()),
        "expert_max_share": float(n.max() / n.sum()),
    }


def harness_error(df: pd.DataFrame) -> pd.DataFrame:
    """Per request, in ms, measured minus the engine's ground truth (NaN without truth):

    - `send_to_arrival_ms` = gt_arrival_ts − start_ts: the *system path* (client send → engine arrival,
      through the gateway when there is one);
    - `ttft_error_ms` = (start_ts + ttft_s) − gt_first_token_ts: the *return share* (first token due at the
      engine → first byte read by the client; includes the gateway's relay when behind the gateway);
    - `harness_ttft_error_ms` = their sum = measured TTFT − the engine's own TTFT
      (gt_first_token_ts − gt_arrival_ts);
    - `e2e_error_ms` = (start_ts + e2e_s) − gt_last_token_ts (last token due → last byte read).
    """
    first = df["start_ts"] + df["ttft_s"]
    last = df["start_ts"] + df["e2e_s"]
    path = (df["gt_arrival_ts"] - df["start_ts"]) * 1000.0
    ret = (first - df["gt_first_token_ts"]) * 1000.0
    return pd.DataFrame(
        {
            "send_to_arrival_ms": path,
            "ttft_error_ms": ret,
            "harness_ttft_error_ms": path + ret,
            "e2e_error_ms": (last - df["gt_last_token_ts"]) * 1000.0,
        },
        index=df.index,
    )


def _group_stats(win: pd.DataFrame, cut_records: int = 0) -> dict[str, float]:
    """Counts and distributions of the window's requests; `cut_records`: the steps' cut records, counted
    whatever their end time (they end at the cut, which can fall just past the window's end)."""
    outcome = win["outcome"] if "outcome" in win else win["success"].map({True: "ok", False: "error"})
    done = win[outcome != "cut"]
    ok = done[done["success"]]
    out: dict[str, float] = {"requests": float(len(ok)), "failed": float((~done["success"]).sum())}
    out["cut"] = float(cut_records)
    # a cut request was not refused, it was still running when the step ended: not an error
    out["error_rate"] = out["failed"] / len(done) if len(done) else float("nan")
    total = len(done) + cut_records
    out["cut_share"] = cut_records / total if total else float("nan")
    out.update(latency_stats(ok["ttft_s"], "ttft"))
    out.update(latency_stats(ok["tpot_s"], "tpot"))
    # every gap between successive content chunks of every request, pooled (vLLM bench's "ITL"); named
    # chunk_gap because peers (GuideLLM, AIPerf) call the per-request TPOT "ITL"
    gaps = np.concatenate([np.asarray(v, dtype=float) for v in ok["itl_s"]]) if len(ok) else np.array([])
    out.update(latency_stats(gaps, "chunk_gap"))
    out.update(latency_stats(ok["e2e_s"], "e2e"))
    over = pd.to_numeric(ok["gateway_overhead_ms"], errors="coerce")
    out["gateway_overhead_p50_ms"] = percentile(over, 50)
    out["gateway_overhead_p99_ms"] = percentile(over, 99)
    err = harness_error(ok)
    for col in ("ttft_error_ms", "e2e_error_ms", "send_to_arrival_ms", "harness_ttft_error_ms"):
        name = col.removesuffix("_ms")
        out[f"{name}_p50_ms"] = percentile(err[col], 50)
        out[f"{name}_p99_ms"] = percentile(err[col], 99)
    for col in ("client_cpu_percent", "client_loop_lag_ms"):
        vals = pd.to_numeric(win[col], errors="coerce") if col in win else pd.Series(dtype=float)
        out[f"{col.removesuffix('_ms').removesuffix('_percent')}_max"] = (
            float(vals.max()) if vals.notna().any() else float("nan")
        )
    return out


def summarize(
    df: pd.DataFrame,
    steps: pd.DataFrame,
    slos: Mapping[str, Any] | None = None,
    *,
    gpu: pd.DataFrame | None = None,
    metrics: pd.DataFrame | None = None,
    configs: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """One row per (config, topology, load_kind, load): the columns listed in docs/ANALYSIS.md.

    `df` comes from load_runs (needs `in_window`), `steps` from load_steps. `slos` may be raw (ttft_ms ...) or
    normalised ({"ttft": seconds}, see normalize_slos); without SLOs goodput is NaN.
    """
    slo = normalize_slos(slos)
    gpu = gpu if gpu is not None else pd.DataFrame(columns=[*KEYS, "ts", "in_window"])
    metrics = metrics if metrics is not None else pd.DataFrame(columns=[*KEYS, "in_window"])
    balance = expert_balance(df, configs)
    rows = []
    for (config, topology, kind, load), st in steps.groupby(GROUP, sort=True):
        per_rep = []
        for _, step in st.iterrows():
            rep_all = df[_step_mask(df, step)]
            rep_df = rep_all[rep_all["in_window"]]
            toks = tokens_in_window(rep_all, float(step["window_start"]), float(step["window_end"]))
            rates = _step_rates(rep_df, float(step["window_s"]), slo, toks)
            rates.update(_gpu_stats(gpu[_step_mask(gpu, step)]))
            rates.update(_engine_stats(metrics[_step_mask(metrics, step)]))
            per_rep.append(rates)
        reps = pd.DataFrame(per_rep)
        row: dict[str, Any] = {
            "config": config,
            "topology": topology,
            "load_kind": kind,
            "load": float(load),
            "users": _users_value(kind, load),
            "reps": len(st),
        }
        phases = [p for p in st["sweep_phase"].dropna().unique()] if "sweep_phase" in st else []
        row["sweep_phase"] = ",".join(map(str, phases)) if phases else None
        row["window_s"] = float(st["window_s"].mean())
        for col in reps.columns:
            row[col] = float(reps[col].mean())
        for col in ("throughput_rps", "output_tps", "tok_per_s"):
            row[f"{col}_std"] = float(reps[col].std(ddof=1)) if len(reps) > 1 else 0.0
        mask = pd.Series(False, index=df.index)
        for _, step in st.iterrows():
            mask |= _step_mask(df, step)
        win = df[mask & df["in_window"]]
        cuts = int((df.loc[mask, "outcome"] == "cut").sum()) if "outcome" in df else 0
        row.update(_group_stats(win, cuts))
        # Little's law: in a steady state about throughput x mean E2E requests are open at a step's end, so
        # that many cut records are expected (per repetition); `cut_backlog` = cut / expected, well above 1
        # when a backlog was building (offered load above what the arm serves)
        expected = row.get("throughput_rps", math.nan) * row.get("e2e_mean_ms", math.nan) / 1000.0 * len(st)
        row["cut_expected"] = expected
        row["cut_backlog"] = cuts / expected if expected > 0 else (math.inf if cuts else math.nan)
        bsel = (balance["config"] == config) & (balance["load_kind"] == kind) & (balance["load"] == load)
        row.update(_balance_stats(balance[bsel]))
        rows.append(row)
    return _int_users(pd.DataFrame(rows))


def _step_mask(frame: pd.DataFrame, step: pd.Series) -> pd.Series:
    """Rows of `frame` (records or telemetry, keyed by analysis.load.KEYS) belonging to one step."""
    if frame.empty:
        return pd.Series(False, index=frame.index, dtype=bool)
    return (
        (frame["run_id"] == step["run_id"])
        & (frame["config"] == step["config"])
        & (frame["load_kind"] == step["load_kind"])
        & (frame["load"] == step["load"])
        & (frame["rep"] == step["rep"])
    )
