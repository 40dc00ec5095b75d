"""Markdown tables generated from the fit and co-location JSON reports, spliced into the docs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from system.calibration.colocation import OUT as COLOC_JSON
from system.calibration.loo import REPORT as FIT_JSON

ROOT = Path(__file__).resolve().parents[2]
LABEL = {"tok_per_s": "tok/s", "ttft_p50_ms": "TTFT p50", "tpot_p50_ms": "TPOT p50", "e2e_p50_s": "E2E p50"}
MARK = "<!-- generated:{name} (system/calibration/tables.py; do not edit by hand) -->"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{v:.1f} %"


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    head = (
        "| shape | tok/s MAPE | TTFT p50 MAPE | TPOT p50 MAPE | GPU util error (points) |\n"
        + "|---" * 5
        + "|"
    )
    lines = [head]
    for shape, s in summary.items():
        if not s:  # no held-out step of this kind (e.g. the only no-graph run left out of a run-wise test)
            continue
        util = s.get("gpu_util_abs_err_points")
        lines.append(
            f"| {shape} | {_pct(s.get('tok_per_s_mape_pct'))} (n={s.get('tok_per_s_n', 0)}) "
            f"| {_pct(s.get('ttft_p50_ms_mape_pct'))} (n={s.get('ttft_p50_ms_n', 0)}) "
            f"| {_pct(s.get('tpot_p50_ms_mape_pct'))} (n={s.get('tpot_p50_ms_n', 0)}) "
            f"| {'–' if util is None else f'{util:.1f}'} |"
        )
    return "\n".join(lines)


def rows_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| step | tok/s meas → pred | TTFT p50 ms meas → pred | TPOT p50 ms meas → pred "
        "| util % meas → pred |",
        "|---|---|---|---|---|",
    ]

    def cell(e: dict[str, Any], m: str, fmt: str) -> str:
        if m not in e:
            return "–"
        x = e[m]
        err = f"{x['error']:+.1f} pt" if m == "gpu_util_mean" else f"{100 * x['error']:+.0f} %"
        return f"{x['measured']:{fmt}} → {x['predicted']:{fmt}} ({err})"

    for r in rows:
        e = r["errors"]
        lines.append(
            f"| {r['step']} | {cell(e, 'tok_per_s', '.0f')} | {cell(e, 'ttft_p50_ms', '.0f')} "
            f"| {cell(e, 'tpot_p50_ms', '.1f')} | {cell(e, 'gpu_util_mean', '.1f')} |"
        )
    return "\n".join(lines)


def fit_tables(rep: dict[str, Any]) -> dict[str, str]:
    p = rep["params"]
    params = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in p.items())
    cross = "\n\n".join(
        f"Fit on {k.split('->')[0]} only, predict {k.split('->')[1]}:\n\n" + summary_table(v["summary"])
        for k, v in rep["cross_shape"].items()
    )
    noise = ", ".join(f"{k} {v:.1f} %" for k, v in rep["run_to_run_noise_pct"].items())
    search = rep.get("token_budget_search", {})
    budget_rows = "\n".join(f"| {k} | {v:.3f} |" for k, v in search.items() if k != "what")
    return {
        "budget-search": "| max_num_batched_tokens | least-squares cost (full data) |\n|---|---|\n"
        + budget_rows,
        "fit-params": "| parameter | fitted value |\n|---|---|\n" + params,
        "loso-summary": summary_table(rep["leave_one_step_out"]["summary"]),
        "loso-rows": rows_table(rep["leave_one_step_out"]["rows"]),
        "loro-summary": summary_table(rep["leave_one_run_out"]["summary"])
        + "\n\n1b-nograph: not estimable run-wise (the only no-graph run identifies the launch cost).",
        "loro-rows": rows_table(rep["leave_one_run_out"]["rows"]),
        "cross-shape": cross,
        "noise": f"Run-to-run noise (A-1b vs B-1b, same set-up, two days): {noise}.",
    }


def coloc_table(rep: dict[str, Any]) -> str:
    lines = [
        "| streams | K × 1b | routed tok/s | vs 1×1b: tok/s, TTFT p50, TPOT p50 "
        "| vs 1×8b: tok/s, TTFT p50, TPOT p50 | util routed / 1×1b / 1×8b |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        a, b = r["ratio_vs_1x1b"], r["ratio_vs_1x8b"]
        lines.append(
            f"| {r['concurrency']} | {r['colocated']} (mem {r['memory_fraction']:.3f} each) "
            f"| {r['routed']['tok_per_s']:.0f} "
            f"| {a['tok_per_s']:.2f}×, {a['ttft_p50_ms']:.2f}×, {a['tpot_p50_ms']:.2f}× "
            f"| {b['tok_per_s']:.2f}×, {b['ttft_p50_ms']:.2f}×, {b['tpot_p50_ms']:.2f}× "
            f"| {r['routed']['gpu_util_mean']:.0f} / {r['single_1x1b']['gpu_util_mean']:.0f} / "
            f"{r['single_1x8b']['gpu_util_mean']:.0f} % |"
        )
    return "\n".join(lines)


def splice(doc: Path, tables: dict[str, str]) -> None:
    """Replace the block after each `generated:NAME` marker (up to the next blank line after a table)."""
    text = doc.read_text()
    for name, body in tables.items():
        mark = MARK.format(name=name)
        # the shortest block up to its end marker, never running into another generated block
        pat = re.compile(re.escape(mark) + r"\n(?:(?!<!-- generated:).)*?<!-- end -->", re.S)
        new = f"{mark}\n{body}\n<!-- end -->"
        if not pat.search(text):
            raise ValueError(f"{doc}: no marker for table {name!r}")
        text = pat.sub(lambda _m, new=new: new, text)
    doc.write_text(text)


def render_docs(root: Path = ROOT) -> None:
    fit = json.loads((root / FIT_JSON).read_text())
    coloc = json.loads((root / COLOC_JSON).read_text())
    splice(root / "docs/CALIBRATION.md", fit_tables(fit))
    splice(root / "docs/SIMULATOR.md", {"colocation": coloc_table(coloc)})


if __name__ == "__main__":
    render_docs()
