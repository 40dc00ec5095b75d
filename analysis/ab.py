"""A/B comparison of two runs (`expert-router compare RUN_A RUN_B`): every headline figure with its 95 % CI.

Configurations are matched by name (A's `routed` against B's `routed`); when the two runs share no name and
each has one configuration (e.g. two plain Locust records dirs), those two are compared. A difference counts
only under the rules of analysis.verdict (CI excludes zero, larger than the harness error, no flags).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.summary import Verdict, analyze_verdict
from analysis.verdict import HEADLINE, Headline, compare_rows, crossover


def _prefixed(v: Verdict, tag: str) -> tuple[pd.DataFrame, Headline]:
    s = v.summary.copy()
    s["config"] = tag + ":" + s["config"].astype(str)
    dists = {(f"{tag}:{c}", k, load): d for (c, k, load), d in v.hl.dists.items()}
    return s, Headline(v.hl.table, dists)


def match_configs(a: Verdict, b: Verdict) -> list[tuple[str, str]]:
    """(config in A, config in B) pairs: same names, else the only configuration of each."""
    ca, cb = sorted(a.summary["config"].unique()), sorted(b.summary["config"].unique())
    common = [c for c in ca if c in cb]
    if common:
        return [(c, c) for c in common]
    if len(ca) == 1 and len(cb) == 1:
        return [(ca[0], cb[0])]
    return [(x, y) for x in ca for y in cb]


def ab_compare(path_a: str | Path, path_b: str | Path, n_boot: int = 1000) -> dict[str, Any]:
    """{pairs: [{a, b, load_kind, rows: [...], crossover}], ...}: B is the baseline, diff = A − B."""
    va, vb = analyze_verdict(path_a, n_boot=n_boot), analyze_verdict(path_b, n_boot=n_boot)
    sa, ha = _prefixed(va, "A")
    sb, hb = _prefixed(vb, "B")
    summary = pd.concat([sa, sb], ignore_index=True)
    hl = Headline(pd.DataFrame(), {**ha.dists, **hb.dists})
    out: dict[str, Any] = {"a": str(path_a), "b": str(path_b), "pairs": []}
    for ca, cb in match_configs(va, vb):
        for kind in sorted(set(sa["load_kind"]) & set(sb["load_kind"])):
            cmp = compare_rows(summary, hl, f"A:{ca}", f"B:{cb}", kind, tuple(HEADLINE))
            if cmp.empty:
                continue
            out["pairs"].append(
                {"a": ca, "b": cb, "load_kind": kind, "rows": cmp, "crossover": crossover(cmp)}
            )
    return out


def _fmt(v: Any, spec: str = "{:,.2f}") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else spec.format(v)


def ab_text(result: dict[str, Any]) -> str:
    """The console/Markdown form of ab_compare's result."""
    lines = [f"A = {result['a']}", f"B = {result['b']}", ""]
    if not result["pairs"]:
        lines.append("No common configuration and load: nothing to compare.")
    for p in result["pairs"]:
        unit = "users" if p["load_kind"] == "users" else "req/s"
        lines += [f"## A:{p['a']} vs B:{p['b']} ({unit})", ""]
        lines.append("| load | metric | A | B | A − B | 95 % CI | A ÷ B | verdict |")
        lines.append("| ---: | --- | ---: | ---: | ---: | --- | ---: | --- |")
        for r in p["rows"].to_dict("records"):
            verdict = {"a wins": "A better", "b wins": "B better"}.get(r["verdict"], r["verdict"])
            lines.append(
                f"| {r['load']:g} | {r['metric']} | {_fmt(r['value_a'])} | {_fmt(r['value_b'])} | "
                f"{_fmt(r['diff'], '{:+,.2f}')} | [{_fmt(r['diff_ci95_lo'])}, {_fmt(r['diff_ci95_hi'])}] | "
                f"{_fmt(r['ratio'], '{:.3f}')} | {verdict} |"
            )
        x = p["crossover"]
        if x is None:
            lines.append("\nCrossover on tok/s: none in range.")
        else:
            who = "A" if x["winner"] == "a" else "B"
            lines.append(
                f"\nCrossover on tok/s: {who} serves more from {x['load']:g} {unit} on "
                f"(A − B = {x['diff']:+,.1f}, 95 % CI [{x['diff_ci95'][0]:,.1f}, {x['diff_ci95'][1]:,.1f}])."
            )
        lines.append("")
    return "\n".join(lines)


def ab_json(result: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready form (NaN -> None)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    pairs = []
    for p in result["pairs"]:
        rows = [{k: clean(v) for k, v in r.items()} for r in p["rows"].to_dict("records")]
        pairs.append({**{k: p[k] for k in ("a", "b", "load_kind", "crossover")}, "rows": rows})
    return {"a": result["a"], "b": result["b"], "pairs": pairs}
