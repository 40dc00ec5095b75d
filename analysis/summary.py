"""The run's verdict as data: summary.json (steps with CIs, flags, saturation, crossover) and a console table.

`analyze_verdict(path)` is the one pipeline (load -> summarize -> flags -> headline CIs -> saturation and
crossover -> "why" sentences); the report, `expert-router compare` and the runner's end-of-run table all
use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.compare import pairs
from analysis.flags import DEFAULT, Thresholds, add_flags, usable
from analysis.load import RunData, load_all
from analysis.metrics import slos_from_manifest, summarize
from analysis.verdict import HEADLINE, Headline, compare_rows, crossover, headline, max_goodput, saturation

SUMMARY_FILE = "summary.json"
SCHEMA = 1


@dataclass
class Verdict:
    """Everything the outputs need."""

    data: RunData
    slos: dict[str, float]
    summary: pd.DataFrame  # analysis.metrics.summarize + flags + headline CI columns
    hl: Headline
    load_kind: str
    saturation: dict[str, dict[str, Any] | None]
    max_goodput: dict[str, dict[str, Any] | None]
    comparisons: dict[tuple[str, str, str], pd.DataFrame] = field(default_factory=dict)
    crossovers: dict[tuple[str, str, str], dict[str, Any] | None] = field(default_factory=dict)
    thresholds: Thresholds = DEFAULT
    sentences: list[str] = field(default_factory=list)


def arm_pairs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(a, b) pairs to compare: routed vs single when both exist, else every pair of configurations."""
    p = pairs(summary)
    if p:
        return p
    names = sorted(summary["config"].unique())
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]


def primary_kind(summary: pd.DataFrame) -> str:
    """The load kind the headline verdict is stated in: "rate" when the run has rate steps (sweeps)."""
    kinds = set(summary["load_kind"])
    return "rate" if "rate" in kinds else "users"


def analyze_verdict(
    path: str | Path, *, data: RunData | None = None, n_boot: int = 1000, thresholds: Thresholds = DEFAULT
) -> Verdict:
    """Load `path` (run dir, experiment dir or plain records dir) and compute the verdict."""
    from analysis.why import why_sentences

    data = data if data is not None else load_all(path)
    slos = slos_from_manifest(data.manifest)
    s = summarize(data.records, data.steps, slos, gpu=data.gpu, metrics=data.metrics, configs=data.configs)
    s = add_flags(s, data.records, data.steps, thresholds)
    hl = headline(data.records, data.steps, slos, n_boot)
    ci_cols = [c for c in hl.table.columns if c.endswith(("_ci95_lo", "_ci95_hi"))]
    s = s.merge(
        hl.table[["config", "load_kind", "load", *ci_cols]], on=["config", "load_kind", "load"], how="left"
    )
    kind = primary_kind(s)
    configs = sorted(s["config"].unique())
    v = Verdict(
        data=data,
        slos=slos,
        summary=s,
        hl=hl,
        load_kind=kind,
        saturation={c: saturation(s, hl, c, kind) for c in configs},
        max_goodput={c: max_goodput(s, hl, c, kind) for c in configs},
        thresholds=thresholds,
    )
    for a, b in arm_pairs(s):
        for k in sorted(set(s["load_kind"])):
            cmp = compare_rows(s, hl, a, b, k)
            if cmp.empty:
                continue
            v.comparisons[(a, b, k)] = cmp
            v.crossovers[(a, b, k)] = crossover(cmp)
    v.sentences = why_sentences(v)
    return v


def _num(v: Any) -> Any:
    if isinstance(v, float | int) and not isinstance(v, bool):
        f = float(v)
        return None if not math.isfinite(f) else round(f, 4)
    return v


def _ci(row: dict[str, Any], m: str) -> list[Any]:
    return [_num(row.get(f"{m}_ci95_lo")), _num(row.get(f"{m}_ci95_hi"))]


def _load_text(kind: str, load: float) -> str:
    if kind == "users":
        return f"{load:g} user" if load == 1 else f"{load:g} users"
    return f"{load:g} req/s"


def step_rows(v: Verdict) -> list[dict[str, Any]]:
    """The `steps` of summary.json (one row per configuration × load; repetitions pooled)."""
    out = []
    for r in v.summary.sort_values(["config", "load_kind", "load"]).to_dict("records"):
        row: dict[str, Any] = {
            "configuration": r["config"],
            "topology": r["topology"],
            "load_kind": r["load_kind"],
            "load": _num(r["load"]),
            "sweep_phase": r.get("sweep_phase"),
            "reps": int(r["reps"]),
            "requests": int(r["requests"]),
            "errors": int(r["failed"]),
            "cut": int(r.get("cut", 0)),
        }
        for m in HEADLINE:
            row[m] = _num(r.get(m))
            row[f"{m}_ci95"] = _ci(r, m)
        row["throughput_rps"] = _num(r.get("throughput_rps"))
        row["output_tps_completed"] = _num(r.get("output_tps"))
        row["chunk_gap_p50_ms"] = _num(r.get("chunk_gap_p50_ms"))
        for k in ("harness_ttft_error", "send_to_arrival", "ttft_error"):
            for q in (50, 99):
                name = f"{k}_p{q}_ms"
                # ttft_error = the return share (first token due -> read); named so in the JSON
                key = f"return_ttft_error_p{q}_ms" if k == "ttft_error" else name
                row[key] = _num(r.get(name))
        for k in ("engine_running_mean", "engine_waiting_mean", "kv_cache_usage_mean", "gpu_util_pct"):
            row[k] = _num(r.get(k))
        row["expert_max_share"] = _num(r.get("expert_max_share"))
        row["starved_share"] = _num(r.get("starved_share"))
        row["flags"] = list(r["flags"])
        out.append(row)
    return out


def verdict_json(v: Verdict) -> dict[str, Any]:
    """The `verdict` object of summary.json."""

    def clean(d: dict[str, Any] | None) -> dict[str, Any] | None:
        if d is None:
            return None
        return {k: ([_num(x) for x in val] if isinstance(val, list) else _num(val)) for k, val in d.items()}

    xs = []
    for (a, b, k), x in v.crossovers.items():
        winner = None if x is None else (a if x["winner"] == "a" else b)
        xs.append({"a": a, "b": b, "load_kind": k, "crossover": clean(x), "winner": winner})
    main = [x for x in xs if x["load_kind"] == v.load_kind]
    top = main[0]["crossover"]["load"] if main and main[0]["crossover"] else None
    comparisons = []
    for (a, b, _k), cmp in v.comparisons.items():
        for r in cmp.to_dict("records"):
            comparisons.append({"a": a, "b": b, **{k: clean({k: val})[k] for k, val in r.items()}})
    return {
        "load_kind": v.load_kind,
        "saturation": {c: clean(s) for c, s in v.saturation.items()},
        "max_goodput": {c: clean(s) for c, s in v.max_goodput.items()},
        "crossover": top,
        "crossovers": xs,
        "comparisons": comparisons,
        "sentences": v.sentences,
    }


def summary_dict(v: Verdict) -> dict[str, Any]:
    """The whole summary.json document."""
    return {
        "schema": SCHEMA,
        "path": str(v.data.path),
        "runs": v.data.run_ids,
        "slos_ms": {k: v_ * 1000.0 for k, v_ in v.slos.items()},
        "thresholds": v.thresholds.as_dict(),
        "steps": step_rows(v),
        "verdict": verdict_json(v),
    }


def write_summary(v: Verdict, out_dir: str | Path | None = None) -> Path:
    """Write summary.json (strict JSON: NaN -> null) into out_dir (default: the analysed dir)."""
    out = Path(out_dir) if out_dir is not None else Path(v.data.path)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SUMMARY_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary_dict(v), indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return spec.format(v)


def console_table(v: Verdict) -> str:
    """The end-of-run table: one line per configuration × load, then the verdict sentences."""
    head = (
        f"{'config':<14} {'load':>10} {'reps':>4} {'req':>6} {'tok/s [95% CI]':>26} {'goodput':>8} "
        f"{'TTFT p50':>9} {'p99':>8} {'TPOT p50':>9} {'E2E p50':>8} {'harn p99':>9}  flags"
    )
    lines = [head, "-" * len(head)]
    for r in step_rows(v):
        ci_txt = f"[{_fmt(r['tok_per_s_ci95'][0], '{:,.0f}')}, {_fmt(r['tok_per_s_ci95'][1], '{:,.0f}')}]"
        lines.append(
            f"{r['configuration']:<14.14} {_load_text(r['load_kind'], r['load'] or 0):>10} {r['reps']:>4} "
            f"{r['requests']:>6} {_fmt(r['tok_per_s'], '{:,.1f}'):>10} {ci_txt:>15} "
            f"{_fmt(r['goodput_rps'], '{:.2f}'):>8} {_fmt(r['ttft_p50_ms'], '{:,.0f}'):>9} "
            f"{_fmt(r['ttft_p99_ms'], '{:,.0f}'):>8} {_fmt(r['tpot_p50_ms'], '{:.1f}'):>9} "
            f"{_fmt(r['e2e_p50_ms'], '{:,.0f}'):>8} {_fmt(r['harness_ttft_error_p99_ms'], '{:.1f}'):>9}  "
            f"{','.join(r['flags']) or 'ok'}"
        )
    lines.append("(latencies in ms; flagged rows back no claim: see docs/ANALYSIS.md, 'Flags')")
    lines += [f"* {s}" for s in v.sentences]
    return "\n".join(lines)


def print_summary(
    path: str | Path, echo: Callable[[str], None] = print, write: bool = True
) -> Verdict | None:
    """End-of-run hook: compute the verdict of `path`, write summary.json there, print the table.

    Never raises (a run's results must not be lost to an analysis bug): problems are echoed instead.
    """
    try:
        v = analyze_verdict(path)
        if write:
            echo(f"summary: {write_summary(v)}")
        echo(console_table(v))
        return v
    except Exception as e:
        echo(f"summary: not written ({type(e).__name__}: {e})")
        return None


def flagged_steps(v: Verdict) -> list[str]:
    """'config at load: flags' for every flagged row (report notes)."""
    out = []
    for r in step_rows(v):
        if r["flags"]:
            only_p99 = usable(r["flags"])
            note = " (p99 only)" if only_p99 else ""
            out.append(
                f"{r['configuration']} at {_load_text(r['load_kind'], r['load'])}: "
                f"{', '.join(r['flags'])}{note}"
            )
    return out
