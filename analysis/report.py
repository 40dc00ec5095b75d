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

from analysis.compare import compare, crossover, findings, pairs
from analysis.load import RunData, load_all, load_steps
from analysis.metrics import expert_balance, slos_from_manifest, summarize
from analysis.plots import plot_all

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
COMPARISON_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("users", "Users", _f("{:,}")),
    ("routed", "Routed", TEXT),
    ("single", "Single", TEXT),
    ("throughput_x", "Req/s ×", _f("{:.2f}")),
    ("output_tps_x", "Tok/s ×", _f("{:.2f}")),
    ("goodput_x", "Goodput ×", _f("{:.2f}")),
    ("ttft_p50_x", "TTFT p50 ×", _f("{:.2f}")),
    ("ttft_p99_x", "TTFT p99 ×", _f("{:.2f}")),
    ("e2e_p50_x", "E2E p50 ×", _f("{:.2f}")),
    ("e2e_p99_x", "E2E p99 ×", _f("{:.2f}")),
    ("routed_wins", "Routed wins", YES_NO),
]
SUMMARY_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("users", "Users", _f("{:,}")),
    ("reps", "Reps", _f("{}")),
    ("requests", "OK req", _f("{:,.0f}")),
    ("throughput_rps", "Req/s", _f("{:.2f}")),
    ("output_tps", "Tok/s", _f("{:,.1f}")),
    ("goodput_rps", "Goodput req/s", _f("{:.2f}")),
    ("error_rate", "Errors", _f("{:.1%}")),
    ("ttft_p50_ms", "TTFT p50", _f("{:,.0f}")),
    ("ttft_p90_ms", "TTFT p90", _f("{:,.0f}")),
    ("ttft_p99_ms", "TTFT p99", _f("{:,.0f}")),
    ("tpot_p50_ms", "TPOT p50", _f("{:.1f}")),
    ("tpot_p99_ms", "TPOT p99", _f("{:.1f}")),
    ("itl_p50_ms", "ITL p50", _f("{:.1f}")),
    ("itl_p99_ms", "ITL p99", _f("{:.1f}")),
    ("e2e_p50_ms", "E2E p50", _f("{:,.0f}")),
    ("e2e_p99_ms", "E2E p99", _f("{:,.0f}")),
]
INFRA_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("users", "Users", _f("{:,}")),
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
    ("ttft_error_p50_ms", "Harness TTFT err p50 ms", _f("{:.2f}")),
    ("ttft_error_p99_ms", "Harness TTFT err p99 ms", _f("{:.2f}")),
]
BALANCE_COLUMNS: list[tuple[str, str, Fmt]] = [
    ("config", "Config", TEXT),
    ("users", "Users", _f("{:,}")),
    ("expert", "Expert", TEXT),
    ("requests", "Requests", _f("{:,}")),
    ("share", "Share", _f("{:.1%}")),
]
CAPTIONS = {
    "throughput_vs_users": "Request throughput (solid; dashed: goodput) and output-token throughput.",
    "ttft_vs_users": "Time to first token: p50 line, p50–p99 band, p99 markers.",
    "e2e_vs_users": "End-to-end latency: p50 line, p50–p99 band, p99 markers.",
    "tpot_vs_users": "Time per output token (first token excluded): p50 line, p50–p99 band, p99 markers.",
    "gpu_timeline": "GPU utilisation and memory over the run (NVML).",
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
    comparison: pd.DataFrame
    crossovers: dict[tuple[str, str], int | str]
    findings: list[str]


def analyze(path: str | Path) -> Analysis:
    """Load a run/experiment dir and compute the summary, comparison, crossovers and findings."""
    data = load_all(path)
    slos = slos_from_manifest(data.manifest)
    summary = summarize(
        data.records, data.steps, slos, gpu=data.gpu, metrics=data.metrics, configs=data.configs
    )
    balance = expert_balance(data.records, data.configs)
    cmp = compare(summary)
    xs = {
        (r, s): crossover(cmp, r, s)
        for r, s in pairs(summary)
        if ((cmp["routed"] == r) & (cmp["single"] == s)).any()
    }
    return Analysis(data, slos, summary, balance, cmp, xs, findings(summary, cmp))


def _crossover_text(xs: dict[tuple[str, str], int | str]) -> list[str]:
    return [
        f"{r} vs {s}: "
        + (f"routed wins from {x} users on." if x != "never" else "routed never wins at the top load.")
        for (r, s), x in xs.items()
    ]


def _notes(a: Analysis) -> list[str]:
    notes = []
    incomplete = len(load_steps(a.data.path, complete_only=False)) - len(a.data.steps)
    if incomplete:
        notes.append(f"{incomplete} incomplete step(s) (step.json status not 'ok') were left out.")
    if a.data.gpu.empty:
        notes.append("No GPU data: the experiment ran without NVML (e.g. on the simulator without a GPU).")
    return notes


def write_report(path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write report.html (self-contained) and report.md (+ report_files/ figures); return the HTML path."""
    a = analyze(path)
    out = Path(out_dir) if out_dir is not None else Path(path)
    out.mkdir(parents=True, exist_ok=True)
    figs = plot_all(a.summary, a.data.records, a.balance, a.data.gpu, a.data.steps, out / FILES_DIR)
    config, env = split_manifest(a.data)
    experiment = str(config.get("name") or a.data.steps["experiment"].iloc[0])
    title = f"Expert Router report: {experiment}"
    slo_text = ", ".join(f"{k.upper()} ≤ {v * 1000:g} ms" for k, v in a.slos.items())
    tables = {
        "comparison": make_table(a.comparison, COMPARISON_COLUMNS, highlight="routed_wins"),
        "summary": make_table(a.summary, SUMMARY_COLUMNS),
        "infra": make_table(a.summary, INFRA_COLUMNS, drop_empty=True),
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
        crossovers=_crossover_text(a.crossovers),
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
        "## Findings",
        "",
    ]
    md += [f"- {f}" for f in a.findings] + [""] + [f"> {n}" for n in notes]
    md += ["", "## Routed vs single (routed ÷ single)", "", markdown_table(tables["comparison"]), ""]
    md += [f"- {c}" for c in _crossover_text(a.crossovers)]
    md += ["", "## Summary (latencies in ms)", "", f"SLOs: {slo_text or 'none'}", ""]
    md += [
        markdown_table(tables["summary"]),
        "",
        "## Infrastructure",
        "",
        markdown_table(tables["infra"]),
        "",
    ]
    md += ["## Figures", ""] + [f"![{CAPTIONS.get(n, n)}]({FILES_DIR}/{p[0].name})" for n, p in figs.items()]
    md += ["", "## Environment", "", markdown_table(env), ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return html_path
