"""Markdown section of `bench gateway`, rendered from its JSON only (`analysis.perfdoc` puts it into
docs/PERFORMANCE.md; `bench gateway --md FILE` writes it alone)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from system.bench._gateway_stats import ratio_ci

LABELS = {"gateway": "ours", "vllm_router": "vllm-router", "litellm": "LiteLLM"}


def _label(arm: str) -> str:
    return LABELS.get(arm, "ours, " + arm.removeprefix("gateway_"))


def _ci(est: dict[str, Any] | None, fmt: str = "{:+.2f}", key: str = "mean") -> str:
    if not est or key not in est:
        return "–"
    s = fmt.format(est[key])
    if "lo" in est:
        s += f" [{fmt.format(est['lo'])}, {fmt.format(est['hi'])}]"
    return s


def render_markdown(
    doc: dict[str, Any], title: str = "Gateway overhead and CPU cost (`expert-router bench gateway`)"
) -> str:
    meta = doc["meta"]
    levels = meta["users"]
    arms = meta["arms"]
    lines = [
        f"### {title}",
        "",
        f"Measured {meta['date']} on {meta['cpu_count']} × {meta['host_cpu']} (load average at the end "
        f"{meta.get('load_avg_end')}); upstream: {meta['upstream']}; "
        f"{meta['reps']} repetitions × {meta['seconds']:g} s per run after {meta['warmup_s']:g} s warm-up; "
        f"core pinning {meta['pinning']}. Every repetition runs, per stream count, direct → every proxy "
        "(order rotated per repetition) → direct, each a closed loop of N streaming users (one "
        "asyncio/aiohttp client process). *Added* TTFT = the proxy's p50 minus the mean of the two direct "
        "p50s of the same repetition; *drift* = |direct after − direct before|, the run's noise floor. CPU = "
        "user+system seconds of the proxy's process tree (psutil) over the run, per request served. "
        "Figures: mean [95 % CI] over repetitions.",
        "",
        "| streams | arm | added TTFT p50 (ms) | added TTFT p99 (ms) | CPU µs / request | throughput kept "
        "| errors |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in levels:
        lvl = doc["levels"][str(n)]
        d = lvl["direct"]
        lines.append(
            f"| {n} | direct (TTFT p50 / drift) | {_ci(d['ttft_p50_ms'], '{:.2f}')} | "
            f"drift {_ci(lvl['drift_p50_ms'], '{:.2f}')} | – | – | – |"
        )
        for arm in arms:
            a = lvl["arms"].get(arm)
            if not a:
                continue
            lines.append(
                f"| {n} | {_label(arm)} | {_ci(a['added_ttft_p50_ms'])} | {_ci(a['added_ttft_p99_ms'])} | "
                f"{_ci(a['cpu_us_per_request'], '{:.0f}')} | {_ci(a['throughput_kept'], '{:.1%}')} | "
                f"{a['errors']} |"
            )
    lines += ["", "| target | estimate [95 % CI] | verdict |", "|---|---|---|"]
    fmts = {"added_ttft_p99_le_5ms_500": "{:+.1f} ms", "throughput_kept_ge_99pct_500": "{:.1%}"}
    for k, v in doc["verdicts"].items():
        est = _estimate(v, fmts.get(k, "{:.3f}"))
        lines.append(f"| `{k}` | {est} | **{v['verdict']}** |")
    lines += [
        "",
        "CPU targets: met when the CI of the paired ratio (geometric mean of per-repetition ratios) lies "
        "below the target, missed when above it, inconclusive when it straddles it. TTFT targets use the "
        "margin 1.5 × vllm-router − ours (ms): met when its CI is above 0 and the margin exceeds the drift, "
        "missed when below 0 by more than the drift, inconclusive otherwise.",
    ]
    if meta.get("options"):
        lines += [
            "",
            "Options requested in this run: "
            + "; ".join(_option(o, v) for o, v in meta["options"].items())
            + ".",
        ]
    if meta.get("speedups"):
        lines += ["", f"The gateway's hot paths in this run: `{meta['speedups']}` (`system/_speedups.c`)."]
    paired = []
    for n, lvl in doc["levels"].items():
        ours, pure = lvl["arms"].get("gateway"), lvl["arms"].get("gateway_pure_python")
        if ours and pure:  # what the C hot paths save, paired per repetition like the targets
            r = ratio_ci(ours["raw"]["cpu_us_per_request"], pure["raw"]["cpu_us_per_request"])
            if "ratio" in r:
                paired.append(
                    f"- {n} streams: {r['ratio']:.3f} [{r.get('lo', float('nan')):.3f}, "
                    f"{r.get('hi', float('nan')):.3f}] over {r['n']} repetitions"
                )
    if paired:
        lines += [
            "",
            "CPU per request, ours / ours without the C hot paths (the `pure_python` arm), paired:",
            "",
            *paired,
        ]
    if "classifier_predict_us_p50" in doc:
        # the same host, the same hour: a host-speed reference between runs of the same classifier code
        lines += [
            "",
            "The gateway's classifier, timed warm on the benchmark's prompts in this run: `predict` p50 "
            f"{doc['classifier_predict_us_p50']} µs, p99 {doc['classifier_predict_us_p99']} µs, mean "
            f"{doc['classifier_predict_us_mean']} µs.",
        ]
    if meta.get("errors"):
        # the first line only: the JSON keeps the log tail
        errs = "; ".join(f"{k}: {v.splitlines()[0].split(' (')[0]}" for k, v in meta["errors"].items())
        lines += ["", f"Not measured: {errs}."]
    lines += ["", f"Reproduce: `{meta['command']}`.", ""]
    return "\n".join(lines)


def _option(name: str, v: dict[str, Any]) -> str:
    parts = [" ".join(v.get("args", []))]
    parts += [f"{k}={x}" for k, x in v.get("env", {}).items()]
    parts += [f"config `{k}: {x}`" for k, x in v.get("config", {}).items()]
    return f"`{name}` = " + " ".join(p for p in parts if p)


def write_markdown(path: Path, doc: dict[str, Any], levels: list[int] | None = None) -> None:
    """`render_markdown` to a file (the signature analysis.perfdoc calls; `levels` come from the JSON)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_markdown(doc))


def _estimate(v: dict[str, Any], fmt: str = "{:.3f}") -> str:
    if "ratio" in v:
        return f"{_ci(v, '{:.2f}', 'ratio')}×"
    if "margin_ms" in v:
        return f"margin {_ci(v['margin_ms'])} ms (drift {v['drift_ms']:.2f} ms)"
    return _ci(v, fmt)


def target_rows(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The gateway rows of the PERFORMANCE.md targets table: (figure, target, estimate [CI], verdict)."""
    reps = doc["meta"]["reps"]
    v = doc["verdicts"]
    rows: list[tuple[str, str, str, str]] = []

    def add(key: str, figure: str, target: str, fmt: str = "{:.3f}") -> None:
        if key in v:
            est = _estimate(v[key], fmt)
            rows.append((figure, target, est, f"{v[key]['verdict']} ({reps} reps, 95 % CI)"))

    for n in doc["meta"]["users"]:
        add(
            f"cpu_per_request_le_1_2x_vllm_router_{n}",
            f"gateway CPU per request vs vllm-router, {n} streams",
            "≤ 1.2×",
        )
        add(f"cpu_per_request_le_1_0x_vllm_router_{n}_stretch", f"… stretch, {n} streams", "≤ 1.0×")
    for n in doc["meta"]["users"]:
        add(
            f"added_ttft_p50_le_1_5x_vllm_router_{n}",
            f"gateway added TTFT p50 vs vllm-router, {n} streams",
            "≤ 1.5× (margin 1.5 × theirs − ours > 0)",
        )
    add("added_ttft_p99_le_5ms_500", "gateway added TTFT p99, 500 streams", "≤ 5 ms", "{:+.1f} ms")
    add("throughput_kept_ge_99pct_500", "gateway throughput kept, 500 streams", "≥ 99 %", "{:.1%}")
    return rows
