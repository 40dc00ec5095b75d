"""Generate the figures of docs/PERFORMANCE.md from the committed benchmark JSON (results/benchmarks/*.json).

The doc holds marked blocks, `<!-- generated:NAME -->` ... `<!-- /generated:NAME -->`; this module rewrites
the inside of each from the JSON with the benchmarks' own Markdown renderers, and leaves every other line
alone (prose without figures). `python -m analysis.perfdoc` rewrites the doc, `--check` exits 1 when it is
out of date (tests/unit/test_perfdoc.py runs the check).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PERFORMANCE.md"
BENCH_DIR = ROOT / "results" / "benchmarks"
BLOCK = re.compile(
    r"(<!-- generated:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)", re.S
)
Results = dict[str, dict[str, Any]]


def load_results(bench_dir: Path = BENCH_DIR) -> Results:
    """benchmark name -> its committed JSON ({} when a file is missing)."""
    out: Results = {}
    for name in (
        "accuracy",
        "classifier",
        "gateway",
        "gateway_accept",
        "gateway_cpu",
        "gateway_options",
        "gateway_workers",
        "sim",
        "soak",
        "tokens_window",
    ):
        f = bench_dir / f"{name}.json"
        out[name] = json.loads(f.read_text()) if f.is_file() else {}
    return out


def _status(met: bool, note: str = "") -> str:
    # one run per figure and no CI: a target is stated as met/missed *in that run*, never as established
    return ("met" if met else "missed") + " (1 run)" + (f", {note}" if note else "")


def _sim_level(r: Results, interval: int, streams: int) -> dict[str, Any]:
    for lv in r["sim"].get("levels", []):
        if lv.get("stream_interval") == interval and lv.get("concurrency") == streams:
            return lv
    return {}


def targets(r: Results) -> str:
    """The targets table: every figure, its target, the committed run's value and whether that run met it."""
    rows: list[tuple[str, str, str, str]] = []
    c = r["classifier"]
    if c:
        p50 = c["predict_500_chars"]["p50_us"]
        limit = c["target"]["p50_us_max"]
        rows.append(
            (
                "classifier `predict()` p50, 500-character prompt",
                f"≤ {limit:g} µs",
                f"{p50:.1f} µs",
                _status(p50 <= limit),
            )
        )
    lv = _sim_level(r, 1, 1000)
    if lv:
        rows.append(
            (
                "sim, 1,000 concurrent streams on one core",
                "sustained",
                f"{lv['tokens_per_s'] / 1000:.1f} k tok/s at {lv['sim_cpu_pct']:.0f} % of a core "
                "(interval 1)",
                _status(bool(lv["sustained"])),
            )
        )
    g = r["gateway"]
    if g and _gateway_new_format(g):  # bench gateway with repetitions: its own CI-based verdicts
        from system.bench._gateway_report import target_rows

        rows += target_rows(g)
        g = {}
        extra = r.get("gateway_cpu") or {}
        if extra and _gateway_new_format(extra):  # the CPU targets measured again with more repetitions
            rows += [(f"{fig} (`gateway_cpu.json`)", *rest) for fig, *rest in target_rows(extra)]
    for n in (100, 500):
        ours, peer = g.get(f"added_ttft_p50_ms_{n}"), g.get(f"peer_vllm_router_added_ttft_p50_ms_{n}")
        if ours is None or peer is None:
            continue
        floor = abs(g.get(f"direct_drift_p50_ms_{n}", 0.0))
        ratio = f" ({ours / peer:.1f}×)" if peer > 0 else ""
        met = ours <= 1.5 * peer if peer > 0 else ours <= peer
        note = f"both inside the {floor:.2f} ms noise floor" if max(abs(ours), abs(peer)) <= floor else ""
        status = "inconclusive (1 run), " + note if note else _status(met)
        rows.append(
            (
                f"gateway added TTFT p50 vs vllm-router, {n} streams",
                "≤ 1.5×",
                f"{ours:+.2f} vs {peer:+.2f} ms{ratio}",
                status,
            )
        )
    if "added_ttft_p99_ms_500" in g:
        v = g["added_ttft_p99_ms_500"]
        rows.append(("gateway added TTFT p99, 500 streams", "≤ 5 ms", f"{v:+.1f} ms", _status(v <= 5.0)))
    if "throughput_kept_500" in g:
        v = g["throughput_kept_500"]
        rows.append(("gateway throughput kept, 500 streams", "≥ 99 %", f"{v:.1%}", _status(v >= 0.99)))
    a = r["accuracy"]
    for n, limit in ((500, 10.0), (1000, 20.0)):
        v = a.get(f"ttft_error_p99_ms_{n}")
        if v is None:
            continue
        lag = a.get(f"client_loop_lag_p99_ms_{n}")
        note = f"client loop lag p99 {lag:.0f} ms: CPU starvation" if v > limit and lag and lag > 20 else ""
        rows.append(
            (
                f"harness TTFT error p99 (client share), {n:,} users",
                f"≤ {limit:g} ms",
                f"{v:+.1f} ms",
                _status(v <= limit, note),
            )
        )
    s = r["soak"]
    if s:
        rows.append(
            (
                f"soak, {s['settings']['minutes']:g} min at {s['settings']['users']:,} users: errors",
                "0",
                f"{s['errors']:,} of {s['requests']:,}",
                _status(s["errors"] == 0),
            )
        )
        growth = s["rss_end_mb"] - s["rss_start_mb"]
        rows.append(
            (
                "soak: gateway RSS",
                "flat (< 10 % growth)",
                f"{s['rss_start_mb']:.1f} → {s['rss_end_mb']:.1f} MiB",
                _status(growth < 0.10 * s["rss_start_mb"]),
            )
        )
    t = r.get("tokens_window") or {}
    if t:
        loads = sorted({float(x["load"]) for x in t["steps"]})
        reps = len(t["steps"]) // max(len(loads), 1)
        worst = t["max_abs_rel_diff"]
        rows.append(
            (
                f"report tok/s vs the sim's token counter, {' and '.join(f'{x:g}' for x in loads)} streams",
                f"within {t['tolerance']:.0%}",
                f"at most {worst:.2%} off in {len(t['steps'])} steps (old count: "
                f"{t['max_abs_completed_rel_diff']:.2%})",
                ("met" if worst <= t["tolerance"] else "missed") + f" ({reps} reps, every step)",
            )
        )
    lines = ["| figure | target | measured (committed run) | status |", "| --- | --- | --- | --- |"]
    lines += [f"| {a_} | {b} | {c_} | {d} |" for a_, b, c_, d in rows]
    return "\n".join(lines)


def machine(r: Results) -> str:
    """The machine line, from the accuracy run's machine record."""
    m = r["accuracy"].get("machine") or r["soak"].get("machine") or {}
    if not m:
        return "**Machine:** unknown (no benchmark JSON)."
    date = str(m.get("date", "")).split(" ")[0]
    return (
        f"**Machine:** {m.get('cpus')} × {m.get('cpu')} vCPU, {m.get('memory_gb')} GB, Python "
        f"{m.get('python')}, Locust {r['accuracy'].get('locust', '?')} (as recorded by the accuracy run of "
        f"{date}; the other sections may come from older runs)."
    )


def sim(r: Results) -> str:
    from system.bench.sim import markdown

    return markdown(r["sim"]).strip() if r["sim"] else "No `sim.json`."


def classifier(r: Results) -> str:
    from system.bench.classifier import _markdown

    return _markdown(r["classifier"]).strip() if r["classifier"] else "No `classifier.json`."


def _gateway_new_format(doc: dict[str, Any]) -> bool:
    """`bench gateway` JSON with repetitions and CIs (levels + verdicts), rendered by its own module."""
    return isinstance(doc.get("levels"), dict) and isinstance(doc.get("verdicts"), dict)


def _gateway_legacy(doc: dict[str, Any]) -> str:
    """The single-run `bench gateway` JSON (flat `<figure>_<N>` keys) as a table."""
    meta = doc["meta"]
    levels = [int(u) for u in meta["users"]]
    names = (("", "ours"), ("peer_vllm_router_", "vllm-router"), ("peer_litellm_", "LiteLLM"))

    def f(v: Any, fmt: str = "{:+.2f}") -> str:
        return "–" if v is None else fmt.format(v)

    lines = [
        "### Gateway overhead (`expert-router bench gateway`)",
        "",
        f"Measured {meta['date']} on {meta['cpu_count']} × {meta['host_cpu']}; upstream: {meta['upstream']}; "
        f"{meta['seconds']:g} s per run after {meta['warmup_s']:g} s warm-up; core pinning "
        f"{meta['pinning']}. "
        "Every run is a closed loop of N streaming users; *added* TTFT is the proxy's TTFT percentile "
        "minus the "
        "direct percentile in the same run. One run, no CI.",
        "",
        "| streams | direct TTFT p50 / p99 (ms) | "
        + " | ".join(f"{n} added p50 / p99 (ms)" for _, n in names)
        + " | throughput kept (ours / vllm-router / LiteLLM)"
        + " | proxy CPU µs per request (ours / vllm-router / LiteLLM) |",
        "|---:|---:|" + "---:|" * len(names) + "---:|---:|",
    ]
    for n in levels:
        row = [
            str(n),
            f(doc.get(f"direct_ttft_p50_ms_{n}"), "{:.2f}")
            + " / "
            + f(doc.get(f"direct_ttft_p99_ms_{n}"), "{:.2f}"),
        ]
        for prefix, _ in names:
            p50, p99 = doc.get(f"{prefix}added_ttft_p50_ms_{n}"), doc.get(f"{prefix}added_ttft_p99_ms_{n}")
            cell = f"{f(p50)} / {f(p99)}"
            if doc.get(f"{prefix}errors_{n}"):
                cell += f" ({doc[f'{prefix}errors_{n}']} errors)"
            row.append(cell)
        row.append(" / ".join(f(doc.get(f"{p}throughput_kept_{n}"), "{:.1%}") for p, _ in names))
        row.append(" / ".join(f(doc.get(f"{p}cpu_us_per_request_{n}"), "{:.0f}") for p, _ in names))
        lines.append("| " + " | ".join(row) + " |")
    drift = [
        f"{n}: {doc[f'direct_drift_p50_ms_{n}']:+.2f} ms" for n in levels if f"direct_drift_p50_ms_{n}" in doc
    ]
    lines += [
        "",
        "Direct-to-direct drift of p50 TTFT within each level (the noise floor): " + ", ".join(drift) + ".",
    ]
    if "classifier_predict_us_p50" in doc:
        lines += [
            "",
            f"Classifier in the gateway's request path: predict p50 {doc['classifier_predict_us_p50']} "
            "µs, p99 "
            f"{doc['classifier_predict_us_p99']} µs ({doc['classifier_predictions_per_s']:,} predictions/s).",
        ]
    lines += ["", f"Reproduce: `{meta['command']} --out results/benchmarks/gateway.json`."]
    return "\n".join(lines)


def gateway(r: Results) -> str:
    doc = r["gateway"]
    if not doc:
        return "No `gateway.json`."
    if _gateway_new_format(doc):
        from system.bench._gateway_report import render_markdown

        return render_markdown(doc).strip()
    return _gateway_legacy(doc)


def _gateway_extra(name: str, title: str) -> Callable[[Results], str]:
    """A further `bench gateway` run (options measured separately), rendered like the main one."""

    def render(r: Results) -> str:
        from system.bench._gateway_report import render_markdown

        doc = r.get(name) or {}
        return render_markdown(doc, title).strip() if doc else f"No `{name}.json`."

    return render


def accuracy(r: Results) -> str:
    from system.bench.accuracy import markdown_table

    a = r["accuracy"]
    if not a:
        return "No `accuracy.json`."
    st, m = a["settings"], a["machine"]
    head = (
        f"Committed run: {m['date']}, `expert-router bench accuracy` with users "
        f"{', '.join(map(str, st['users']))}, "
        f"{st['seconds']:g} s each, target `{st['target']}`, profile `{st['profile']}`, "
        f"{st['max_tokens']} output "
        f"tokens, stream interval {st['stream_interval']}, on {m['cpus']} × {m['cpu']}."
    )
    scope = a.get("client_ttft_error_scope")
    lines = [head, "", markdown_table(a["steps"])]
    if scope:
        lines += ["", f"Client share scope in this run: {scope}."]
    else:
        lines += [
            "",
            "This run predates the `harness_ttft_error_*` / `client_ttft_error_*` keys (–); the client share "
            "column is today's `ttft_error_*` (first byte read − the sim's first-token due time, "
            "gateway relay "
            "included).",
        ]
    worst = [s for s in a["steps"] if s["users"] == max(st["users"])]
    if worst:
        w = worst[0]
        lines += [
            "",
            f"At {w['users']:,} users: client share p99 {w['ttft_error_p99_ms']:+.1f} ms, send → arrival "
            f"p99 {w['send_to_arrival_p99_ms']:.1f} ms, client loop lag p99 "
            f"{w['client_loop_lag_p99_ms']:.1f} ms, at most {w['client_cpu_max_percent']:.0f} % client CPU.",
        ]
    return "\n".join(lines)


def soak(r: Results) -> str:
    s = r["soak"]
    if not s:
        return "No `soak.json`."
    st, m = s["settings"], s["machine"]
    ttft = s["ttft_p99_ms_per_minute"]
    lines = [
        f"Committed run: {st['minutes']:g} minutes at {st['users']:,} users ({m['date']}, "
        f"`expert-router bench soak --minutes {st['minutes']:g} --users {st['users']}`, {m['cpus']} × "
        f"{m['cpu']}).",
        "",
        "| users | minutes | requests | errors | gateway RSS start → end (max) | open fds start → end "
        "| p99 TTFT per minute, first → last (ms) | p99 E2E drift | client loop lag p99 |",
        "|---:|---:|---:|---:|---|---|---|---:|---:|",
        f"| {st['users']} | {st['minutes']:g} | {s['requests']:,} | {s['errors']} | "
        f"{s['rss_start_mb']:.1f} → "
        f"{s['rss_end_mb']:.1f} MiB ({s['rss_max_mb']:.1f}) | {s['fds_start']:,} → {s['fds_end']:,} | "
        f"{ttft[0]:,.0f} → {ttft[-1]:,.0f} (drift {s['ttft_p99_drift_ms']:+,.0f}) | "
        f"{s['e2e_p99_drift_ms']:+,.0f} ms | {s['client_loop_lag_p99_ms']:.0f} ms |",
        "",
        f"p99 TTFT per minute (ms): {', '.join(f'{v:,.0f}' for v in ttft)}. Locust's count "
        f"{'equals' if s['locust_requests'] == s['requests'] else 'differs from'} the records "
        f"({s['locust_requests']:,}); {s['duplicate_request_ids']} duplicate request ids; open fds "
        f"{s['fds_end'] - s['fds_start']:+,} ({(s['fds_end'] - s['fds_start']) / s['fds_start']:+.0%}) "
        "between "
        "the first and last sample.",
    ]
    return "\n".join(lines)


def tokens_window(r: Results) -> str:
    """Windowed client tok/s against the sim's own counter (analysis.enginecheck), per step."""
    t = r.get("tokens_window") or {}
    if not t:
        return "No `tokens_window.json`."
    lines = [
        "| users | rep | interval (s) | tokens, client (windowed) | tokens, sim counter | difference "
        "| tokens, completed requests (old count) | difference |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in t["steps"]:
        lines.append(
            f"| {s['load']:g} | {s['rep']} | {s['check_s']:.1f} | {s['client_tokens']:,.0f} | "
            f"{s['engine_tokens']:,.0f} | {s['rel_diff']:+.2%} | {s['completed_tokens']:,.0f} | "
            f"{s['completed_rel_diff']:+.2%} |"
        )
    host = t.get("host") or {}
    within = sum(1 for s in t["steps"] if abs(s["rel_diff"]) <= t["tolerance"])
    lines += [
        "",
        f"{within} of {len(t['steps'])} steps within {t['tolerance']:.0%}. "
        f"Largest difference: windowed {t['max_abs_rel_diff']:.2%} (target ≤ {t['tolerance']:.0%}), "
        f"old completion count {t['max_abs_completed_rel_diff']:.2%}; {len(t['steps'])} steps of "
        f"`{t['experiment']}` on {host.get('cpu_model', '?')} ({host.get('cpu_count_logical', '?')} CPUs).",
    ]
    if t.get("note"):
        lines += ["", f"Run note: {t['note']}."]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[Results], str]] = {
    "tokens_window": tokens_window,
    "machine": machine,
    "targets": targets,
    "sim": sim,
    "classifier": classifier,
    "gateway": gateway,
    "gateway_options": _gateway_extra(
        "gateway_options", "Gateway server options, first screening (`gateway_options.json`)"
    ),
    "gateway_workers": _gateway_extra(
        "gateway_workers", "Gateway with 2 worker processes (`gateway_workers.json`)"
    ),
    "gateway_cpu": _gateway_extra(
        "gateway_cpu", "CPU per request against vllm-router, 10 repetitions (`gateway_cpu.json`)"
    ),
    "gateway_accept": _gateway_extra(
        "gateway_accept",
        "Fake upstream on stock uvloop: one accept per loop iteration (`gateway_accept.json`)",
    ),
    "accuracy": accuracy,
    "soak": soak,
}


def render(text: str, results: Results) -> str:
    """`text` with every generated block rewritten from `results`; unknown block names are an error."""

    def repl(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise KeyError(f"unknown generated block {name!r}; known: {', '.join(RENDERERS)}")
        return f"{m.group(1)}{RENDERERS[name](results).rstrip()}\n{m.group(4)}"

    return BLOCK.sub(repl, text)


def blocks(text: str) -> list[str]:
    """Names of the generated blocks in `text`, in order."""
    return [m.group("name") for m in BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--bench-dir", type=Path, default=BENCH_DIR)
    ap.add_argument("--check", action="store_true", help="exit 1 if the doc is not what the JSON generates")
    args = ap.parse_args(argv)
    text = args.doc.read_text()
    new = render(text, load_results(args.bench_dir))
    if args.check:
        if new != text:
            print(f"{args.doc} is out of date: run `python -m analysis.perfdoc`", file=sys.stderr)
            return 1
        print(f"{args.doc}: {len(blocks(text))} generated blocks in sync")
        return 0
    args.doc.write_text(new)
    print(f"wrote {args.doc} ({len(blocks(new))} generated blocks)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
