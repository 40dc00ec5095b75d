"""The report of a results dir: self-contained report.html (figures embedded) and a Markdown summary."""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from analysis.flags import usable
from analysis.load import RunData, is_records_dir, load_steps
from analysis.metrics import expert_balance
from analysis.plots import plot_all
from analysis.summary import Verdict, analyze_verdict, flagged_steps, write_summary
from analysis.why import classifier_cards, engine_table, expert_table

FILES_DIR = "report_files"  # figures (PNG + SVG) next to report.md
Fmt = Callable[[Any], str]


def _f(spec: str) -> Fmt:
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        if isinstance(v, float) and math.isinf(v):
            return "∞"
        return spec.format(v)

    return fmt


TEXT: Fmt = str
YES_NO: Fmt = lambda v: "yes" if bool(v) else "no"  # noqa: E731


def _ci_text(lo: Any, hi: Any, spec: str = "{:,.1f}") -> str:
    if lo is None or hi is None or (isinstance(lo, float) and not math.isfinite(lo)):
        return "–"
    return f"[{spec.format(lo)}, {spec.format(hi)}]"


COMPARISON_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("load", "Load", _f("{:g}")),
    ("a", "A", TEXT),
    ("b", "B", TEXT),
    ("tok_a", "Tok/s A", _f("{:,.1f}")),
    ("tok_b", "Tok/s B", _f("{:,.1f}")),
    ("tok_diff_ci", "Δ tok/s 95 % CI", TEXT),
    ("tok_verdict", "Tok/s", TEXT),
    ("good_a", "Goodput A", _f("{:.2f}")),
    ("good_b", "Goodput B", _f("{:.2f}")),
    ("good_verdict", "Goodput", TEXT),
    ("ttft99_a", "TTFT p99 A", _f("{:,.0f}")),
    ("ttft99_b", "TTFT p99 B", _f("{:,.0f}")),
    ("ttft99_diff_ci", "Δ TTFT p99 CI", TEXT),
    ("ttft99_verdict", "TTFT p99", TEXT),
    ("tpot_a", "TPOT p50 A", _f("{:.1f}")),
    ("tpot_b", "TPOT p50 B", _f("{:.1f}")),
    ("tpot_verdict", "TPOT p50", TEXT),
    ("e2e_a", "E2E p50 A", _f("{:,.0f}")),
    ("e2e_b", "E2E p50 B", _f("{:,.0f}")),
    ("e2e_verdict", "E2E p50", TEXT),
]
SUMMARY_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("load_text", "Load", TEXT),
    ("reps", "Reps", _f("{}")),
    ("requests", "OK req", _f("{:,.0f}")),
    ("cut", "Cut", _f("{:,.0f}")),
    ("throughput_rps", "Req/s", _f("{:.2f}")),
    ("tok_per_s", "Tok/s", _f("{:,.1f}")),
    ("tok_ci", "Tok/s 95 % CI", TEXT),
    ("goodput_rps", "Goodput req/s", _f("{:.2f}")),
    ("goodput_ci", "Goodput 95 % CI", TEXT),
    ("error_rate", "Errors", _f("{:.1%}")),
    ("ttft_p50_ms", "TTFT p50", _f("{:,.0f}")),
    ("ttft_p99_ms", "TTFT p99", _f("{:,.0f}")),
    ("ttft99_ci", "TTFT p99 95 % CI", TEXT),
    ("tpot_p50_ms", "TPOT p50", _f("{:.1f}")),
    ("chunk_gap_p50_ms", "Chunk gap p50", _f("{:.1f}")),
    ("e2e_p50_ms", "E2E p50", _f("{:,.0f}")),
    ("e2e_p99_ms", "E2E p99", _f("{:,.0f}")),
    ("flags_text", "Flags", TEXT),
]
ENGINE_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("load_text", "Load", TEXT),
    ("engines", "Engines", _f("{:.0f}")),
    ("running_per_engine", "Running / engine", _f("{:.1f}")),
    ("waiting_per_engine", "Waiting / engine", _f("{:.1f}")),
    ("kv_cache_usage", "KV cache use", _f("{:.1%}")),
    ("tpot_p50_ms", "TPOT p50 ms", _f("{:.1f}")),
    ("gpu_util_pct", "GPU util %", _f("{:.0f}")),
    ("tok_per_s", "Tok/s", _f("{:,.1f}")),
]
EXPERT_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("load_text", "Load", TEXT),
    ("expert", "Expert", TEXT),
    ("requests", "Requests", _f("{:,}")),
    ("share", "Share", _f("{:.1%}")),
    ("clusters", "Clusters", TEXT),
    ("train_share", "Clusters' share of training prompts", _f("{:.1%}")),
    ("ttft_p50_ms", "TTFT p50 ms", _f("{:,.0f}")),
    ("tpot_p50_ms", "TPOT p50 ms", _f("{:.1f}")),
    ("e2e_p50_ms", "E2E p50 ms", _f("{:,.0f}")),
]
INFRA_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("load_text", "Load", TEXT),
    ("gpu_count", "GPUs", _f("{:.0f}")),
    ("gpu_util_pct", "GPU util %", _f("{:.0f}")),
    ("gpu_mem_used_gib", "GPU mem GiB", _f("{:.1f}")),
    ("gpu_power_w", "GPU power W", _f("{:.0f}")),
    ("engine_running_mean", "Running (engines)", _f("{:.1f}")),
    ("engine_waiting_mean", "Waiting (engines)", _f("{:.1f}")),
    ("kv_cache_usage_mean", "KV cache use", _f("{:.1%}")),
    ("expert_max_share", "Busiest expert", _f("{:.0%}")),
    ("expert_cv", "Expert CV", _f("{:.2f}")),
    ("gateway_overhead_p50_ms", "Gateway p50 ms", _f("{:.2f}")),
    ("gateway_overhead_p99_ms", "Gateway p99 ms", _f("{:.2f}")),
    ("send_to_arrival_p50_ms", "Send → arrival p50 ms", _f("{:.2f}")),
    ("send_to_arrival_p99_ms", "Send → arrival p99 ms", _f("{:.2f}")),
    ("ttft_error_p50_ms", "Return share p50 ms", _f("{:.2f}")),
    ("ttft_error_p99_ms", "Return share p99 ms", _f("{:.2f}")),
    ("harness_ttft_error_p99_ms", "Harness TTFT err p99 ms", _f("{:.2f}")),
    ("client_loop_lag_max", "Client loop lag max ms", _f("{:.0f}")),
    ("starved_share", "Starved share", _f("{:.0%}")),
]
BALANCE_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("load", "Load", _f("{:g}")),
    ("expert", "Expert", TEXT),
    ("requests", "Requests", _f("{:,}")),
    ("share", "Share", _f("{:.1%}")),
]
CAPTIONS = {
    "throughput_vs_users": "Request throughput (solid; dashed: goodput with its 95 % CI) and output tokens "
    "generated in the window (95 % CI).",
    "ttft_vs_users": "Time to first token: p50 line, p50–p99 band, p99 markers.",
    "e2e_vs_users": "End-to-end latency: p50 line, p50–p99 band, p99 markers.",
    "tpot_vs_users": "Time per output token (first token excluded): p50 line, p50–p99 band, p99 markers.",
    "gpu_timeline": "GPU utilisation and memory over the run (gpu.csv: NVML, DCGM or the simulator).",
    "requests_per_expert": "Share of requests per expert for each user count (routing balance).",
    "latency_cdf": "Latency CDFs of successful requests in the measurement window.",
}


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    text_cols: set[int] = field(default_factory=set)
    highlight: list[bool] = field(default_factory=list)


def make_table(
    df: pd.DataFrame,
    columns: Sequence[tuple[str, str, Fmt]],
    highlight: str | None = None,
    drop_empty: bool = False,
) -> Table:
    """Format the given columns of `df` into strings (missing columns, and all-NaN ones if asked, dropped)."""
    cols = [
        c for c in columns if c[0] in df.columns and not (drop_empty and len(df) and df[c[0]].isna().all())
    ]
    rows = [[fmt(rec[col]) for col, _, fmt in cols] for rec in df.to_dict("records")]
    text = {i for i, c in enumerate(cols) if c[2] is TEXT}
    marks = [bool(v) for v in df[highlight]] if highlight and highlight in df else []
    return Table([h for _, h, _ in cols], rows, text, marks)


def markdown_table(t: Table) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|")

    align = ["---" if i in t.text_cols else "---:" for i in range(len(t.headers))]
    lines = ["| " + " | ".join(esc(h) for h in t.headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(d, dict):
        out: list[tuple[str, str]] = []
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(d, list) and any(isinstance(x, dict | list) for x in d):
        return [(prefix, json.dumps(d, separators=(", ", ": ")))]
    return [(prefix, ", ".join(map(str, d)) if isinstance(d, list) else str(d))]


def split_manifest(data: RunData) -> tuple[dict[str, Any], Table]:
    """(experiment config, environment table) from the manifest; configs from config.json as a fallback."""
    manifest = dict(data.manifest)
    config: Any = None
    for key in ("config", "experiment", "resolved_config"):
        if isinstance(manifest.get(key), dict):
            config = manifest.pop(key)
            break
    if config is None:
        config = {"configurations": data.configs}
    env = _flatten(manifest) if manifest else [("manifest", "manifest.json missing")]
    return config, Table(["Key", "Value"], [[k, v] for k, v in env], {0, 1})


@dataclass
class Analysis:
    """Everything computed from one results dir."""

    data: RunData
    slos: dict[str, float]
    summary: pd.DataFrame
    balance: pd.DataFrame
    verdict: Verdict
    findings: list[str]


def analyze(path: str | Path) -> Analysis:
    """Load a run/experiment/records dir and compute the summary, verdict and "why" sentences."""
    v = analyze_verdict(path)
    balance = expert_balance(v.data.records, v.data.configs)
    return Analysis(v.data, v.slos, v.summary, balance, v, v.sentences)


def _load_text(kind: str, load: float) -> str:
    if kind == "users":
        return f"{load:g} user" if load == 1 else f"{load:g} users"
    return f"{load:g} req/s"


def _verdict_word(r: dict[str, Any] | None, a: str, b: str) -> str:
    if r is None:
        return "–"
    if r["verdict"] == "a wins":
        return a
    if r["verdict"] == "b wins":
        return b
    return "flagged" if r["verdict"] == "flagged" else "not distinguishable"


def comparison_frame(v: Verdict) -> pd.DataFrame:
    """One row per pair × load: both arms' headline figures, the difference CIs and who wins (or not)."""
    rows = []
    for (a, b, kind), cmp in v.comparisons.items():
        for load, g in cmp.groupby("load", sort=True):
            by = {r["metric"]: r for r in g.to_dict("records")}

            def get(m: str, by: dict[str, dict[str, Any]] = by) -> dict[str, Any] | None:
                return by.get(m)

            tok, good, t99 = get("tok_per_s"), get("goodput_rps"), get("ttft_p99_ms")
            tpot, e2e = get("tpot_p50_ms"), get("e2e_p50_ms")
            rows.append(
                {
                    "load": load,
                    "load_kind": kind,
                    "a": a,
                    "b": b,
                    "tok_a": tok["value_a"] if tok else math.nan,
                    "tok_b": tok["value_b"] if tok else math.nan,
                    "tok_diff_ci": _ci_text(tok["diff_ci95_lo"], tok["diff_ci95_hi"]) if tok else "–",
                    "tok_verdict": _verdict_word(tok, a, b),
                    "good_a": good["value_a"] if good else math.nan,
                    "good_b": good["value_b"] if good else math.nan,
                    "good_verdict": _verdict_word(good, a, b),
                    "ttft99_a": t99["value_a"] if t99 else math.nan,
                    "ttft99_b": t99["value_b"] if t99 else math.nan,
                    "ttft99_diff_ci": _ci_text(t99["diff_ci95_lo"], t99["diff_ci95_hi"], "{:,.0f}")
                    if t99
                    else "–",
                    "ttft99_verdict": _verdict_word(t99, a, b),
                    "tpot_a": tpot["value_a"] if tpot else math.nan,
                    "tpot_b": tpot["value_b"] if tpot else math.nan,
                    "tpot_verdict": _verdict_word(tpot, a, b),
                    "e2e_a": e2e["value_a"] if e2e else math.nan,
                    "e2e_b": e2e["value_b"] if e2e else math.nan,
                    "e2e_verdict": _verdict_word(e2e, a, b),
                    "a_wins": bool(tok and tok["verdict"] == "a wins"),
                }
            )
    return pd.DataFrame(rows)


def _with_text(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if len(df) and "load_kind" in df:
        df["load_text"] = [_load_text(k, x) for k, x in zip(df["load_kind"], df["load"], strict=True)]
    if "flags" in df:
        df["flags_text"] = [", ".join(f) if f else "ok" for f in df["flags"]]
    if "tok_per_s_ci95_lo" in df:
        df["tok_ci"] = [
            _ci_text(lo, hi) for lo, hi in zip(df["tok_per_s_ci95_lo"], df["tok_per_s_ci95_hi"], strict=True)
        ]
        df["goodput_ci"] = [
            _ci_text(lo, hi, "{:.2f}")
            for lo, hi in zip(df["goodput_rps_ci95_lo"], df["goodput_rps_ci95_hi"], strict=True)
        ]
        df["ttft99_ci"] = [
            _ci_text(lo, hi, "{:,.0f}")
            for lo, hi in zip(df["ttft_p99_ms_ci95_lo"], df["ttft_p99_ms_ci95_hi"], strict=True)
        ]
    return df


def _saturation_text(v: Verdict) -> list[str]:
    out = []
    for config, sat in v.saturation.items():
        rows = v.summary[(v.summary["config"] == config) & (v.summary["load_kind"] == v.load_kind)]
        if sat is None and not any(usable(list(f)) for f in rows["flags"]):
            out.append(f"{config}: not judged, every step is flagged.")
        elif sat is None:
            out.append(f"{config}: not saturated in the loads measured.")
        else:
            out.append(
                f"{config}: saturates at {_load_text(v.load_kind, sat['load'])} ({sat['reason']}); best "
                f"{sat['tok_per_s']:,.1f} tok/s {_ci_text(*sat['tok_per_s_ci95'])} at "
                f"{_load_text(v.load_kind, sat['tok_per_s_load'])}."
            )
    return out


def _notes(a: Analysis) -> list[str]:
    notes = []
    if not is_records_dir(a.data.path):
        incomplete = len(load_steps(a.data.path, complete_only=False)) - len(a.data.steps)
        if incomplete:
            notes.append(f"{incomplete} incomplete step(s) (step.json status not 'ok') were left out.")
    if a.data.gpu.empty:
        notes.append("No GPU data: gpu.csv is empty (no NVML, DCGM or simulated GPU telemetry).")
    flagged = flagged_steps(a.verdict)
    if flagged:
        notes.append(
            "Flagged steps (kept out of the claims; see docs/ANALYSIS.md, 'Flags'): " + "; ".join(flagged)
        )
    return notes


def write_report(
    path: str | Path, out_dir: str | Path | None = None, analysis: Analysis | None = None
) -> Path:
    """Write report.html (self-contained), report.md (+ report_files/ figures) and summary.json; return the
    HTML path. Pass `analysis` (from analyze(path)) to reuse a computed verdict."""
    a = analysis if analysis is not None else analyze(path)
    v = a.verdict
    out = Path(out_dir) if out_dir is not None else Path(path)
    out.mkdir(parents=True, exist_ok=True)
    write_summary(v, out)
    figs = plot_all(a.summary, a.data.records, a.balance, a.data.gpu, a.data.steps, out / FILES_DIR)
    config, env = split_manifest(a.data)
    experiment = str(config.get("name") or a.data.steps["experiment"].iloc[0])
    title = f"Expert Router report: {experiment}"
    slo_text = ", ".join(f"{k.upper()} ≤ {v * 1000:g} ms" for k, v in a.slos.items())
    summary = _with_text(a.summary)
    engines = _with_text(engine_table(a.summary, a.data.configs))
    experts = _with_text(expert_table(a.data.records, classifier_cards(a.data.path)))
    tables = {
        "comparison": make_table(comparison_frame(v), COMPARISON_COLUMNS, highlight="a_wins"),
        "summary": make_table(summary, SUMMARY_COLUMNS),
        "engines": make_table(engines, ENGINE_COLUMNS, drop_empty=True),
        "experts": make_table(experts, EXPERT_COLUMNS, drop_empty=True),
        "infra": make_table(summary, INFRA_COLUMNS, drop_empty=True),
        "balance": make_table(a.balance[a.balance["topology"] == "routed"], BALANCE_COLUMNS),
    }
    env_loader = jinja2.FileSystemLoader(Path(__file__).parent / "templates")
    template = jinja2.Environment(loader=env_loader, autoescape=True).get_template("report.html.j2")
    figures = [
        {"caption": CAPTIONS.get(name, name), "data": base64.b64encode(paths[0].read_bytes()).decode()}
        for name, paths in figs.items()
    ]
    notes = _notes(a)
    html = template.render(
        title=title,
        results_path=str(Path(path)),
        run_ids=a.data.run_ids,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        findings=a.findings,
        notes=notes,
        saturation=_saturation_text(v),
        slos=slo_text,
        figures=figures,
        config_json=json.dumps(config, indent=2, sort_keys=True),
        environment=env,
        **tables,
    )
    html_path = out / "report.html"
    html_path.write_text(html, encoding="utf-8")
    md = [
        f"# {title}",
        "",
        f"Results: `{Path(path)}` · runs: {', '.join(a.data.run_ids)}",
        "",
        "## Verdict",
        "",
    ]
    md += [f"- {f}" for f in a.findings] + [""] + [f"> {n}" for n in notes]
    md += ["", "## Saturation", ""] + [f"- {t}" for t in _saturation_text(v)]
    md += ["", "## A vs B (95 % CIs; a difference inside its CI or the harness error is not a win)", ""]
    md += [markdown_table(tables["comparison"]), ""]
    md += ["## Summary (latencies in ms)", "", f"SLOs: {slo_text or 'none'}", ""]
    md += [
        markdown_table(tables["summary"]),
        "",
        "## Why: engines, batch size and TPOT",
        "",
        markdown_table(tables["engines"]),
        "",
        "## Why: experts",
        "",
        markdown_table(tables["experts"]),
        "",
        "## Infrastructure and harness error",
        "",
        markdown_table(tables["infra"]),
        "",
    ]
    md += ["## Figures", ""] + [f"![{CAPTIONS.get(n, n)}]({FILES_DIR}/{p[0].name})" for n, p in figs.items()]
    md += ["", "## Environment", "", markdown_table(env), ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return html_path
