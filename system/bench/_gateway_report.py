"""Markdown fragment of `bench gateway` (merged into docs/PERFORMANCE.md by hand)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAMES = (("", "ours"), ("peer_vllm_router_", "vllm-router"), ("peer_litellm_", "LiteLLM"))


PROFILE_NOTES = """\
**Where the gateway's time goes.** The proxy with the lower CPU cost per request adds the least TTFT once
several processes share the cores; this run's CPU per request, ours over vllm-router's, by stream count:
{cpu_ratio}. A py-spy profile (`py-spy record --native`) of our gateway at 500 streams on this machine
(2026-11-24, same workload) shows ~45 % of its CPU in the kernel calls every proxy must make per chunk
(`read` from the expert, `write` to the client, `epoll`), and the rest spread thinly over aiohttp's
response parser and StreamReader wake-up, uvicorn's `send`, and the per-request work (body parse, ~15 µs
classification, request build). Measured per request with 33-chunk answers: ~185 µs fixed plus ~15–20 µs per
chunk. Fixes already applied, each measured: Starlette's middleware stack skipped for the two completion
endpoints (−25 % CPU), cyclic-GC tuning (GC was ~19 % of CPU at 500 streams), no per-chunk read timer, an
in-place rewrite of `model`. What remains is the price of a Python event loop per chunk; at 1,000 streams our
single process needs about one full core and falls behind the Rust router, whose threads do the same syscalls
with less work around them. With 2 cores, the load client and the fake upstream share one core: from ~1,000
streams the *direct* baseline itself is saturated (see its TTFT), so differences there are indicative only.
LiteLLM's proxy re-serialises every event (and drops unknown fields such as the sim's `sim_timing`)."""


def _f(v: Any, fmt: str = "{:+.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def write_markdown(path: Path, doc: dict[str, Any], levels: list[int]) -> None:
    meta = doc["meta"]
    lines = [
        "## Gateway overhead (`expert-router bench gateway`)",
        "",
        f"Measured {meta['date']} on {meta['cpu_count']} × {meta['host_cpu']}; "
        f"upstream: {meta['upstream']}; {meta['seconds']:g} s per run after {meta['warmup_s']:g} s warm-up; "
        f"core pinning {meta['pinning']}. Every run is a closed loop of N streaming users (one "
        "asyncio/aiohttp client process); *added* TTFT is the proxy's TTFT percentile minus the direct "
        "percentile in the same run (direct measured before and after the proxies, pooled). Everything, "
        "including the load client, shares this machine's cores.",
        "",
        "| streams | direct TTFT p50 / p99 (ms) | "
        + " | ".join(f"{n} added p50 / p99 (ms)" for _, n in NAMES)
        + " | throughput kept (ours / vllm-router / LiteLLM)"
        + " | proxy CPU µs per request (ours / vllm-router / LiteLLM) |",
        "|---:|---:|" + "---:|" * len(NAMES) + "---:|---:|",
    ]
    for n in levels:
        d50, d99 = doc.get(f"direct_ttft_p50_ms_{n}"), doc.get(f"direct_ttft_p99_ms_{n}")
        row = [str(n), f"{_f(d50, '{:.2f}')} / {_f(d99, '{:.2f}')}"]
        for prefix, _ in NAMES:
            p50, p99 = doc.get(f"{prefix}added_ttft_p50_ms_{n}"), doc.get(f"{prefix}added_ttft_p99_ms_{n}")
            errs = doc.get(f"{prefix}errors_{n}")
            cell = f"{_f(p50)} / {_f(p99)}"
            if errs:
                cell += f" ({errs} errors)"
            row.append(cell)
        row.append(" / ".join(_f(doc.get(f"{p}throughput_kept_{n}"), "{:.1%}") for p, _ in NAMES))
        row.append(" / ".join(_f(doc.get(f"{p}cpu_us_per_request_{n}"), "{:.0f}") for p, _ in NAMES))
        lines.append("| " + " | ".join(row) + " |")
    drift = [
        f"{n}: {doc[f'direct_drift_p50_ms_{n}']:+.2f} ms" for n in levels if f"direct_drift_p50_ms_{n}" in doc
    ]
    lines += [
        "",
        "Direct-to-direct drift of p50 TTFT within each level (the noise floor of this run): "
        + ", ".join(drift)
        + ".",
        "",
        f"Classifier (TF-IDF → SVD → KMeans, k=2, in the gateway's request path): predict p50 "
        f"{doc['classifier_predict_us_p50']} µs, p99 {doc['classifier_predict_us_p99']} µs "
        f"({doc['classifier_predictions_per_s']:,} predictions/s on one core, prompts of "
        f"{doc['classifier_prompt_chars_mean']:.0f} characters on average).",
        "",
        "Targets (issue 3): " + ", ".join(f"`{k}`: **{v}**" for k, v in doc["targets_met"].items()) + ".",
    ]
    ratio = [
        f"{n}: {doc[f'cpu_us_per_request_{n}'] / doc[f'peer_vllm_router_cpu_us_per_request_{n}']:.1f}×"
        for n in levels
        if doc.get(f"cpu_us_per_request_{n}") and doc.get(f"peer_vllm_router_cpu_us_per_request_{n}")
    ]
    lines += ["", PROFILE_NOTES.format(cpu_ratio=", ".join(ratio) or "n/a")]
    if meta.get("errors"):
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in meta["errors"].items())]
    lines += ["", f"Reproduce: `{meta['command']}` (raw figures: `results/benchmarks/gateway.json`).", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
