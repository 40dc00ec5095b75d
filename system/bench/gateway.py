"""`expert-router bench gateway`: TTFT added and throughput kept by our gateway vs vllm-router and LiteLLM."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import click
import numpy as np

from system.bench._out import local_out
from system.bench._peers import (
    Target,
    core_plan,
    pinned,
    start_fake_upstream,
    start_litellm,
    start_our_gateway,
    start_sim,
    start_vllm_router,
)
from system.processes import ServerProcess, free_port
from system.runner.manifest import cpu_model

PEER_KEYS = {"vllm_router": "peer_vllm_router", "litellm": "peer_litellm"}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def bench_classifier(work: Path, texts: list[str]) -> tuple[Path, dict[str, float]]:
    """Train the k=2 classifier the gateway routes with, and time `predict` on the benchmark prompts."""
    from system.classifier import PromptClassifier
    from system.workload import load_prompts

    train = load_prompts({"kind": "labelled", "n": 2000, "seed": 0})
    clf = PromptClassifier.train(train, 2, svd_components=32, seed=0)
    out = work / "classifier"
    clf.save(out)
    clf = PromptClassifier.load(out)
    for t in texts[:100]:  # warm caches
        clf.predict(t)
    times = []
    for _ in range(5):
        for t in texts:
            t0 = time.perf_counter()
            clf.predict(t)
            times.append(time.perf_counter() - t0)
    us = np.array(times) * 1e6
    stats = {
        "classifier_predict_us_p50": round(float(np.percentile(us, 50)), 2),
        "classifier_predict_us_p99": round(float(np.percentile(us, 99)), 2),
        "classifier_predict_us_mean": round(float(us.mean()), 2),
        "classifier_predictions_per_s": round(float(1e6 / us.mean())),
        "classifier_prompt_chars_mean": round(float(np.mean([len(t) for t in texts])), 1),
    }
    return out, stats


def run_load(
    work: Path, target: Target, users: int, seconds: float, warmup: float, bodies: Path, cores: str | None
) -> dict[str, Any]:
    """One closed-loop run of the load client against `target`; adds the proxy's CPU use to the result."""
    out = work / f"run-{target.name}-{users}-{time.time_ns()}.json"
    cmd = [sys.executable, "-m", "system.bench.loadclient", "--bodies", str(bodies), "--out", str(out)]
    cmd += ["--users", str(users), "--seconds", str(seconds), "--warmup", str(warmup)]
    for u in target.urls:
        cmd += ["--url", u]
    for h in target.headers:
        cmd += ["--header", h]
    cpu0 = target.cpu_seconds()
    subprocess.run(pinned(cmd, cores), check=True, timeout=seconds + warmup + 120)
    cpu = target.cpu_seconds() - cpu0
    res = json.loads(out.read_text())
    out.unlink()
    res["proxy_cpu_s"] = cpu
    return res


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = np.concatenate([np.array(r["ttft_ms"], dtype=float) for r in runs]) if runs else np.array([])
    reqs = sum(r["requests"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    all_reqs = sum(r["requests"] * (r["seconds"] + r["warmup_s"]) / r["seconds"] for r in runs)
    errors: dict[str, int] = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    s: dict[str, Any] = {"requests": reqs, "errors": errors, "wall_s": round(wall, 2)}
    if len(ttft):
        for q in (50, 90, 99):
            s[f"ttft_p{q}_ms"] = round(float(np.percentile(ttft, q)), 3)
    s["tokens_per_s"] = round(float(np.mean([r["completed_tokens_per_s"] for r in runs])), 1)
    s["client_cpu_s"] = round(sum(r["client_cpu_s"] for r in runs), 2)
    cpu = sum(r.get("proxy_cpu_s", 0.0) for r in runs)
    if cpu and reqs >= 50:  # below that, idle work (health checks, timers) dominates the figure
        s["proxy_cpu_s"] = round(cpu, 2)
        s["proxy_cpu_us_per_request"] = round(cpu * 1e6 / all_reqs, 1)
    return s


def compare(users: list[int], results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Contract keys: added TTFT = target percentile - direct percentile (same run), throughput kept."""
    flat: dict[str, Any] = {}
    for n in users:
        d = results["direct"][n]
        flat[f"direct_ttft_p50_ms_{n}"] = d.get("ttft_p50_ms")
        flat[f"direct_ttft_p99_ms_{n}"] = d.get("ttft_p99_ms")
        flat[f"direct_tokens_per_s_{n}"] = d.get("tokens_per_s")
        for name, prefix in (("gateway", ""), *((k, v + "_") for k, v in PEER_KEYS.items())):
            r = results.get(name, {}).get(n)
            if not r or "ttft_p50_ms" not in r or "ttft_p50_ms" not in d:
                continue
            flat[f"{prefix}added_ttft_p50_ms_{n}"] = round(r["ttft_p50_ms"] - d["ttft_p50_ms"], 3)
            flat[f"{prefix}added_ttft_p99_ms_{n}"] = round(r["ttft_p99_ms"] - d["ttft_p99_ms"], 3)
            flat[f"{prefix}throughput_kept_{n}"] = round(r["tokens_per_s"] / d["tokens_per_s"], 4)
            flat[f"{prefix}errors_{n}"] = sum(r["errors"].values())
            if "proxy_cpu_us_per_request" in r:
                flat[f"{prefix}cpu_us_per_request_{n}"] = r["proxy_cpu_us_per_request"]
    return flat


def check_targets(flat: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals, evaluated on this run's numbers (None when a figure is missing)."""

    def within(n: int) -> bool | None:
        ours, peer = flat.get(f"added_ttft_p50_ms_{n}"), flat.get(f"peer_vllm_router_added_ttft_p50_ms_{n}")
        if ours is None or peer is None:
            return None
        # a peer at or below 0 (noise) would make any ratio meaningless: allow 0.1 ms absolute slack
        return bool(ours <= max(1.5 * peer, peer + 0.1))

    p99, kept = flat.get("added_ttft_p99_ms_500"), flat.get("throughput_kept_500")
    return {
        "p50_within_1_5x_vllm_router_100": within(100),
        "p50_within_1_5x_vllm_router_500": within(500),
        "p99_added_le_5ms_500": None if p99 is None else bool(p99 <= 5.0),
        "throughput_kept_ge_99pct_500": None if kept is None else bool(kept >= 0.99),
    }


@click.command()
@click.option("--users", default="1,100,500,1000", show_default=True, help="Comma-separated stream counts.")
@click.option("--seconds", default=10.0, show_default=True, help="Measured seconds per run.")
@click.option("--warmup", default=3.0, show_default=True, help="Unmeasured seconds before each run.")
@click.option("--out", default=local_out("gateway.json"), show_default=True, type=click.Path())
@click.option(
    "--md", default=local_out("gateway.md"), show_default=True, type=click.Path(), help="'' to skip."
)
@click.option("--upstream", type=click.Choice(["fake", "sim"]), default="fake", show_default=True)
@click.option("--sim-profile", default="debug", show_default=True)
@click.option("--ttft-ms", default=50.0, show_default=True, help="Fake upstream time to first token.")
@click.option("--itl-ms", default=20.0, show_default=True, help="Fake upstream time between tokens.")
@click.option("--chunks", default=33, show_default=True, help="Tokens (SSE events) per answer.")
@click.option(
    "--peers", default="vllm_router,litellm", show_default=True, help="Peers to include ('' for none)."
)
@click.option("--pin/--no-pin", default=True, show_default=True, help="Pin client/upstream/proxy to cores.")
def gateway(
    users: str,
    seconds: float,
    warmup: float,
    out: str,
    md: str,
    upstream: str,
    sim_profile: str,
    ttft_ms: float,
    itl_ms: float,
    chunks: int,
    peers: str,
    pin: bool,
) -> None:
    """Added TTFT (p50/p99) and throughput kept through the gateway, vs the same upstreams direct, with the
    same figures for vllm-router and LiteLLM's proxy, all in one run (classification included for ours)."""
    from system.bench._gateway_report import write_markdown
    from system.workload import load_prompts

    levels = [int(u) for u in users.split(",") if u.strip()]
    peer_names = [p.strip() for p in peers.split(",") if p.strip()]
    cores = core_plan(os.cpu_count() or 1) if pin else core_plan(1)
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    prompts = load_prompts({"kind": "labelled", "n": 256, "seed": 7})
    texts = [p.text for p in prompts]
    bodies = work / "bodies.json"
    extra = {"ignore_eos": True, "min_tokens": chunks} if upstream == "sim" else {}
    bodies.write_text(
        json.dumps(
            [
                {
                    "model": "auto",
                    "messages": [{"role": "user", "content": t}],
                    "max_tokens": chunks,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **extra,
                }
                for t in texts
            ]
        )
    )
    click.echo(f"work dir {work}; cores {cores}")
    clf_dir, clf_stats = bench_classifier(work, texts)
    click.echo(f"classifier: {clf_stats}")

    procs: list[ServerProcess] = []
    targets: dict[str, Target] = {}
    try:
        ports = [free_port(), free_port()]
        ups = [f"http://127.0.0.1:{p}" for p in ports]
        if upstream == "fake":
            procs.append(start_fake_upstream(work, ports, ttft_ms, itl_ms, chunks, cores["upstream"]))
            served = "fake-model"
        else:
            procs += [
                start_sim(work, p, f"sim{i}", sim_profile, cores["upstream"]) for i, p in enumerate(ports)
            ]
            served = "sim0"  # litellm forwards this name; sims check it, so litellm is only fair on sim0
        targets["direct"] = Target("direct", [u + "/v1/chat/completions" for u in ups])
        targets["gateway"] = start_our_gateway(work, ups, clf_dir, cores["proxy"])
        if "vllm_router" in peer_names:
            targets["vllm_router"] = start_vllm_router(work, ups, cores["proxy"])
        if "litellm" in peer_names:
            targets["litellm"] = start_litellm(work, ups, served, cores["proxy"])
        for t in targets.values():
            if t.error:
                click.echo(f"{t.name}: {t.error}", err=True)
        runnable = [t for t in targets.values() if not t.error]
        raw: dict[str, dict[int, list[dict[str, Any]]]] = {t.name: {} for t in runnable}
        # N-major order, direct before and after the proxies: drift over the run shows up as a
        # difference between the two direct runs (reported), and is shared by all proxies.
        for n in levels:
            order = [targets["direct"], *[t for t in runnable if t.name != "direct"], targets["direct"]]
            for t in order:
                res = run_load(work, t, n, seconds, warmup, bodies, cores["client"])
                raw[t.name].setdefault(n, []).append(res)
                s = summarize([res])
                click.echo(
                    f"users={n:5d} {t.name:12s} ttft p50 {s.get('ttft_p50_ms', float('nan')):8.2f} "
                    f"p99 {s.get('ttft_p99_ms', float('nan')):8.2f} ms  tok/s {s['tokens_per_s']:9.1f}  "
                    f"cpu/req {s.get('proxy_cpu_us_per_request', 0):7.0f} us  errors {s['errors']}"
                )
                time.sleep(1.0)
    finally:
        for t in targets.values():
            if t.proc is not None:
                t.proc.stop()
        for p in procs:
            p.stop()

    results = {name: {n: summarize(rs) for n, rs in by_n.items()} for name, by_n in raw.items()}
    flat = compare(levels, results)
    for n in levels:
        a, b = (summarize([r]) for r in raw["direct"][n])
        if "ttft_p50_ms" in a and "ttft_p50_ms" in b:
            flat[f"direct_drift_p50_ms_{n}"] = round(b["ttft_p50_ms"] - a["ttft_p50_ms"], 3)
    doc: dict[str, Any] = {
        **flat,
        **clf_stats,
        "targets_met": check_targets(flat),
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host_cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "pinning": cores,
            "upstream": (
                f"fake_upstream x2 ports, ttft {ttft_ms} ms, itl {itl_ms} ms, {chunks} chunks"
                if upstream == "fake"
                else f"2 sims, profile {sim_profile}, {chunks} tokens"
            ),
            "users": levels,
            "seconds": seconds,
            "warmup_s": warmup,
            "command": " ".join(["expert-router", "bench", "gateway", *sys.argv[3:]]),
            "versions": {p: _version(p) for p in ("vllm-router", "litellm", "aiohttp", "uvicorn", "fastapi")},
            "errors": {t.name: t.error for t in targets.values() if t.error},
        },
        "runs": results,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(doc, indent=2, default=str))
    click.echo(f"wrote {out}")
    if md:
        write_markdown(Path(md), doc, levels)
        click.echo(f"wrote {md}")
