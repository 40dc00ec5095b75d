"""The "why" behind a verdict, from the data: engine queues, KV cache, TPOT vs batch size, GPU, expert shares.

Tables: `engine_table` (per config × load: engines, running and waiting per engine, KV-cache use, TPOT, GPU
utilisation from gpu.csv whatever its `source`) and `expert_table` (per expert: share of requests, latency,
the clusters routed to it and those clusters' share of the classifier's training prompts, from card.json).
`why_sentences` turns them into sentences; every number in a sentence is read from these tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.flags import usable
from analysis.load import expert_names, find_run_dirs
from analysis.metrics import percentile

if TYPE_CHECKING:
    from analysis.summary import Verdict


def _load_text(kind: str, load: float) -> str:
    if kind == "users":
        return f"{load:g} user" if load == 1 else f"{load:g} users"
    return f"{load:g} req/s"


def _engines(configs: dict[str, Any], config: str) -> int:
    return max(len(expert_names(dict(configs.get(config, {})))), 1)


def engine_table(summary: pd.DataFrame, configs: dict[str, Any]) -> pd.DataFrame:
    """Per config × load: engines, running/waiting per engine, KV use, TPOT p50, GPU util, tok/s."""
    rows = []
    for r in summary.sort_values(["config", "load_kind", "load"]).to_dict("records"):
        n = _engines(configs, r["config"])
        running = float(r.get("engine_running_mean", math.nan))
        waiting = float(r.get("engine_waiting_mean", math.nan))
        rows.append(
            {
                "config": r["config"],
                "load_kind": r["load_kind"],
                "load": r["load"],
                "engines": n,
                "running_per_engine": running / n,
                "waiting_per_engine": waiting / n,
                "kv_cache_usage": float(r.get("kv_cache_usage_mean", math.nan)),
                "tpot_p50_ms": float(r.get("tpot_p50_ms", math.nan)),
                "gpu_util_pct": float(r.get("gpu_util_pct", math.nan)),
                "tok_per_s": float(r.get("tok_per_s", math.nan)),
            }
        )
    return pd.DataFrame(rows)


def classifier_cards(path: str | Path) -> dict[str, dict[str, Any]]:
    """config -> its classifier card.json (`<run>/<config>/classifier/card.json`), newest run winning."""
    out: dict[str, dict[str, Any]] = {}
    try:
        runs = find_run_dirs(path)
    except FileNotFoundError:
        return out
    for run in runs:
        for card in sorted(run.glob("*/classifier/card.json")):
            try:
                out[card.parent.parent.name] = json.loads(card.read_text())
            except (OSError, ValueError):
                continue
    return out


def expert_table(records: pd.DataFrame, cards: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per config × load × expert (routed requests in the window, repetitions pooled).

    Columns: config, load_kind, load, expert, requests, share, ttft_p50_ms, tpot_p50_ms, e2e_p50_ms, clusters
    (the cluster ids the gateway sent to this expert), train_share (those clusters' share of the training
    prompts in card.json; NaN without a card).
    """
    cols = ["config", "load_kind", "load", "expert", "requests", "share", "ttft_p50_ms", "tpot_p50_ms"]
    cols += ["e2e_p50_ms", "clusters", "train_share"]
    if records.empty:
        return pd.DataFrame(columns=cols)
    win = records[records["in_window"] & records["success"] & (records["expert"] != "")]
    rows = []
    for (config, kind, load), g in win.groupby(["config", "load_kind", "load"], sort=True):
        card = cards.get(config, {})
        sizes = card.get("cluster_sizes") or []
        total_train = float(sum(sizes)) if sizes else math.nan
        for expert, e in g.groupby("expert", sort=True):
            clusters = sorted({int(c) for c in e["cluster"] if int(c) >= 0})
            train = sum(sizes[c] for c in clusters if c < len(sizes)) / total_train if sizes else math.nan
            rows.append(
                {
                    "config": config,
                    "load_kind": kind,
                    "load": float(load),
                    "expert": expert,
                    "requests": len(e),
                    "share": len(e) / len(g),
                    "ttft_p50_ms": percentile(e["ttft_s"], 50) * 1000.0,
                    "tpot_p50_ms": percentile(e["tpot_s"], 50) * 1000.0,
                    "e2e_p50_ms": percentile(e["e2e_s"], 50) * 1000.0,
                    "clusters": ",".join(map(str, clusters)),
                    "train_share": train,
                }
            )
    return pd.DataFrame(rows, columns=cols)


def _f(v: float, spec: str, unit: str = "") -> str:
    return "n/a" if not (isinstance(v, float | int) and math.isfinite(v)) else spec.format(v) + unit


def _config_sentences(v: Verdict, eng: pd.DataFrame, experts: pd.DataFrame, config: str) -> list[str]:
    out = []
    e = eng[(eng["config"] == config) & (eng["load_kind"] == v.load_kind)].sort_values("load")
    s = v.summary
    rows = s[(s["config"] == config) & (s["load_kind"] == v.load_kind)].sort_values("load")
    if e.empty:
        return out
    sat = v.saturation.get(config)
    lo, hi = e.iloc[0], e.iloc[-1]
    parts = []
    if math.isfinite(hi["running_per_engine"]):
        parts.append(
            f"ran {_f(lo['running_per_engine'], '{:.1f}')} → {_f(hi['running_per_engine'], '{:.1f}')} "
            "requests at once"
        )
    if math.isfinite(hi["waiting_per_engine"]):
        w0, w1 = _f(lo["waiting_per_engine"], "{:.1f}"), _f(hi["waiting_per_engine"], "{:.1f}")
        parts.append(f"had {w0} → {w1} waiting")
    if math.isfinite(hi["kv_cache_usage"]):
        k0, k1 = _f(lo["kv_cache_usage"] * 100, "{:.1f}"), _f(hi["kv_cache_usage"] * 100, "{:.1f}", " %")
        parts.append(f"used {k0} → {k1} of its KV cache")
    if math.isfinite(hi["gpu_util_pct"]):
        parts.append(
            f"showed {_f(lo['gpu_util_pct'], '{:.0f}')} → {_f(hi['gpu_util_pct'], '{:.0f}', ' %')} GPU "
            "utilisation"
        )
    if not parts:
        parts.append("reported no engine or GPU telemetry")
    span = f"from {_load_text(v.load_kind, lo['load'])} to {_load_text(v.load_kind, hi['load'])}"
    queue = f"{config}, {span}: each of its {int(hi['engines'])} engine(s) " + ", ".join(parts)
    out.append(queue + ".")
    # TPOT against batch size: the decode step gets longer as the batch grows
    fit = e[np.isfinite(e["running_per_engine"]) & np.isfinite(e["tpot_p50_ms"])]
    if len(fit) >= 2 and fit["running_per_engine"].max() > fit["running_per_engine"].min():
        slope = np.polyfit(fit["running_per_engine"], fit["tpot_p50_ms"], 1)[0]
        out.append(
            f"{config}: TPOT p50 went {_f(fit['tpot_p50_ms'].iloc[0], '{:.1f}')} → "
            f"{_f(fit['tpot_p50_ms'].iloc[-1], '{:.1f}', ' ms')} as the batch per engine grew "
            f"{_f(fit['running_per_engine'].iloc[0], '{:.1f}')} → "
            f"{_f(fit['running_per_engine'].iloc[-1], '{:.1f}')} "
            f"(≈ {slope:+.2f} ms per extra running request)."
        )
    clean = [r for r in rows.to_dict("records") if usable(list(r["flags"]))]
    if sat is None and not clean:
        out.append(f"{config}: every step is flagged, so whether and where it saturates is not judged.")
    elif sat is None:
        top = clean[-1]
        far = (
            "so the engines were far from full"
            if math.isfinite(hi["kv_cache_usage"])
            and hi["kv_cache_usage"] < 0.5
            and hi["waiting_per_engine"] < 1
            else "within the loads measured"
        )
        out.append(
            f"{config} did not saturate: tok/s still rose with load at "
            f"{_load_text(v.load_kind, top['load'])} (its highest unflagged load), {far}."
        )
    else:
        at = e[e["load"] == sat["load"]]
        why = {
            "plateau": "tok/s stopped rising (not distinguishable from the best lower load)",
            "slo": "fewer than 90 % of requests met every SLO",
            "errors": "requests failed",
            "cuts": "most requests were still running when the step ended",
        }[sat["reason"]]
        detail = ""
        if len(at):
            a = at.iloc[0]
            bits = []
            if math.isfinite(a["running_per_engine"]):
                bits.append(f"{a['running_per_engine']:.1f} requests ran per engine")
            if math.isfinite(a["waiting_per_engine"]):
                bits.append(f"{a['waiting_per_engine']:.1f} waited")
            if math.isfinite(a["kv_cache_usage"]):
                bits.append(f"the KV cache was {a['kv_cache_usage']:.0%} full")
            if math.isfinite(a["gpu_util_pct"]):
                bits.append(f"GPU utilisation was {a['gpu_util_pct']:.0f} %")
            detail = ("; there " + ", ".join(bits)) if bits else ""
        out.append(
            f"{config} saturates at {_load_text(v.load_kind, sat['load'])}: {why}{detail}; its best was "
            f"{_f(sat['tok_per_s'], '{:,.0f}')} tok/s (95 % CI {_f(sat['tok_per_s_ci95'][0], '{:,.0f}')}–"
            f"{_f(sat['tok_per_s_ci95'][1], '{:,.0f}')})."
        )
    mg = v.max_goodput.get(config)
    if mg is not None:
        out.append(
            f"{config}: maximum goodput under the SLOs {_f(mg['goodput_rps'], '{:.2f}')} req/s (95 % CI "
            f"{_f(mg['goodput_rps_ci95'][0], '{:.2f}')}–{_f(mg['goodput_rps_ci95'][1], '{:.2f}')}) at "
            f"{_load_text(v.load_kind, mg['load'])}."
        )
    x = experts[(experts["config"] == config) & (experts["load_kind"] == v.load_kind)]
    if len(x) and x["expert"].nunique() > 1 and len(rows):
        top_load = x["load"].max()
        xt = x[x["load"] == top_load].sort_values("share", ascending=False)
        busiest = xt.iloc[0]
        rest = xt.iloc[1:]
        sentence = (
            f"{config} at {_load_text(v.load_kind, top_load)}: {busiest['expert']} took "
            f"{busiest['share']:.0%} of "
            f"the requests (the others {', '.join(f'{s:.0%}' for s in rest['share'])})"
        )
        if math.isfinite(busiest["train_share"]):
            sentence += (
                f"; its cluster(s) {busiest['clusters']} hold {busiest['train_share']:.0%} of the "
                "classifier's "
                "training prompts"
            )
        sentence += (
            f"; its TTFT p50 {_f(busiest['ttft_p50_ms'], '{:,.0f}', ' ms')} and TPOT p50 "
            f"{_f(busiest['tpot_p50_ms'], '{:.1f}', ' ms')} vs "
            f"{_f(rest['ttft_p50_ms'].median(), '{:,.0f}', ' ms')} "
            f"and {_f(rest['tpot_p50_ms'].median(), '{:.1f}', ' ms')} on the others (median)."
        )
        out.append(sentence)
    return out


def _pair_sentences(v: Verdict, eng: pd.DataFrame) -> list[str]:
    out = []
    for (a, b, kind), cmp in v.comparisons.items():
        if kind != v.load_kind:
            continue
        tps = cmp[cmp["metric"] == "tok_per_s"].sort_values("load")
        x = v.crossovers.get((a, b, kind))
        wins_a = [f"{load:g}" for load in tps.loc[tps["winner"] == "a", "load"]]  # NaN/None never equal
        wins_b = [f"{load:g}" for load in tps.loc[tps["winner"] == "b", "load"]]
        tie = [f"{load:g}" for load in tps.loc[tps["verdict"] == "not distinguishable", "load"]]
        flagged = [f"{load:g}" for load in tps.loc[~tps["usable"], "load"]]
        unit = "users" if kind == "users" else "req/s"
        parts = []
        if wins_a:
            parts.append(f"{a} wins at {', '.join(wins_a)} {unit}")
        if wins_b:
            parts.append(f"{b} wins at {', '.join(wins_b)} {unit}")
        if tie:
            parts.append(f"not distinguishable at {', '.join(tie)} {unit}")
        if flagged:
            parts.append(f"flagged (no claim) at {', '.join(flagged)} {unit}")
        out.append(f"Output tok/s, {a} vs {b} (95 % CI of the difference): " + "; ".join(parts) + ".")
        if x is None:
            out.append(
                f"Crossover {a} vs {b}: none in range (no arm wins with its CI at the highest usable load)."
            )
        else:
            w = a if x["winner"] == "a" else b
            other = b if w == a else a
            where = (
                "at every usable load measured"
                if x["everywhere"]
                else f"from {_load_text(kind, x['load'])} on"
            )
            d = x["diff"] if x["winner"] == "a" else -x["diff"]
            lo, hi = x["diff_ci95"] if x["winner"] == "a" else [-x["diff_ci95"][1], -x["diff_ci95"][0]]
            out.append(
                f"Crossover {a} vs {b}: {w} serves more output tok/s than {other} {where} "
                f"(+{d:,.0f} tok/s at {_load_text(kind, x['load'])}, 95 % CI {lo:,.0f} to {hi:,.0f})."
            )
        # the mechanism at the highest common usable load: batch per engine and TPOT on each side
        use = tps[tps["usable"]]
        if len(use):
            load = float(use["load"].iloc[-1])
            ea = eng[(eng["config"] == a) & (eng["load_kind"] == kind) & (eng["load"] == load)]
            eb = eng[(eng["config"] == b) & (eng["load_kind"] == kind) & (eng["load"] == load)]
            if len(ea) and len(eb):
                ra, rb = ea.iloc[0], eb.iloc[0]
                out.append(
                    f"At {_load_text(kind, load)}: {a} spreads the load over {int(ra['engines'])} engine(s) "
                    f"({_f(ra['running_per_engine'], '{:.1f}')} running each, TPOT p50 "
                    f"{_f(ra['tpot_p50_ms'], '{:.1f}', ' ms')}), {b} over {int(rb['engines'])} "
                    f"({_f(rb['running_per_engine'], '{:.1f}')} running each, TPOT p50 "
                    f"{_f(rb['tpot_p50_ms'], '{:.1f}', ' ms')})."
                )
        lat = cmp[(cmp["metric"] == "ttft_p99_ms") & cmp["usable"]].sort_values("load")
        if len(lat):
            r = lat.iloc[-1]
            verdict = {"a": f"{a} is faster", "b": f"{b} is faster"}.get(r["winner"], "not distinguishable")
            out.append(
                f"TTFT p99 at {_load_text(kind, r['load'])}: {_f(r['value_a'], '{:,.0f}', ' ms')} vs "
                f"{_f(r['value_b'], '{:,.0f}', ' ms')}, difference 95 % CI "
                f"{_f(r['diff_ci95_lo'], '{:,.0f}')} to "
                f"{_f(r['diff_ci95_hi'], '{:,.0f}', ' ms')}, harness error "
                f"{_f(r['harness_error_ms'], '{:.1f}', ' ms')}: "
                f"{verdict}."
            )
    return out


def why_sentences(v: Verdict) -> list[str]:
    """Sentences that explain the verdict from the engine, GPU and routing numbers (no fixed claims)."""
    eng = engine_table(v.summary, v.data.configs)
    experts = expert_table(v.data.records, classifier_cards(v.data.path) if v.data.manifest else {})
    out = _pair_sentences(v, eng)
    for config in sorted(v.summary["config"].unique()):
        out += _config_sentences(v, eng, experts, config)
    flagged = [
        f"{r['config']} at {_load_text(r['load_kind'], r['load'])} ({', '.join(r['flags'])})"
        for r in v.summary.to_dict("records")
        if not usable(list(r["flags"]))
    ]
    if flagged:
        out.append("Kept out of every claim (flagged): " + "; ".join(flagged) + ".")
    return out
