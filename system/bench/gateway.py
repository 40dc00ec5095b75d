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

from system import speedups
from system.bench._gateway_stats import analyse, verdicts
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


def summarize(res: dict[str, Any]) -> dict[str, Any]:
    """One run's figures (the raw TTFT list is dropped: the JSON keeps percentiles only)."""
    ttft = np.array(res["ttft_ms"], dtype=float)
    s: dict[str, Any] = {
        "requests": res["requests"],
        "errors": res["errors"],
        "wall_s": round(res["wall_s"], 2),
    }
    if len(ttft):
        for q in (50, 90, 99):
            s[f"ttft_p{q}_ms"] = round(float(np.percentile(ttft, q)), 3)
    s["tokens_per_s"] = round(float(res["completed_tokens_per_s"]), 1)
    s["client_cpu_s"] = round(res["client_cpu_s"], 3)
    # the proxy's CPU from before the client started to after it ended, over every request it served in that
    # time (warm-up included); below ~50 requests idle work (health checks, timers) dominates the figure
    total = res.get("requests_total", res["requests"])
    if res.get("proxy_cpu_s") and total >= 50:
        s["proxy_cpu_s"] = round(res["proxy_cpu_s"], 3)
        s["cpu_us_per_request"] = round(res["proxy_cpu_s"] * 1e6 / total, 1)
    return s


# Options of our gateway that `--options` measures side by side: (CLI arguments, environment, config keys).
OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, str], dict[str, Any]]] = {
    "raw": (("--upstream-client", "raw"), {}, {}),
    "aiohttp": (("--upstream-client", "aiohttp"), {}, {}),
    "workers2": (("--workers", "2"), {}, {}),
    "asyncio": (("--loop", "asyncio"), {}, {}),
    "single_accept": (("--accept", "single"), {}, {}),
    "fastapi": ((), {"EXPERT_ROUTER_GATEWAY_FASTPATH": "0"}, {}),
    # the same relay without a classifier: the routing decision vllm-router's round robin also makes
    "round_robin": ((), {}, {"policy": {"kind": "round_robin"}}),
    # the pure-Python classifier kernel and chunked-body reader, where the C extension is built
    "pure_python": ((), {"EXPERT_ROUTER_SPEEDUPS": "0"}, {}),
}


@click.command()
@click.option("--users", default="1,100,500,1000", show_default=True, help="Comma-separated stream counts.")
@click.option("--seconds", default=10.0, show_default=True, help="Measured seconds per run.")
@click.option("--warmup", default=3.0, show_default=True, help="Unmeasured seconds before each run.")
@click.option("--reps", default=3, show_default=True, help="Repetitions of every (stream count, arm) run.")
@click.option(
    "--out",
    default=local_out("gateway.json"),
    show_default=True,
    type=click.Path(),
    help="JSON result file (name results/benchmarks/gateway.json to replace the committed figures).",
)
@click.option("--md", default="", type=click.Path(), help="Also write the markdown section here.")
@click.option("--upstream", type=click.Choice(["fake", "sim"]), default="fake", show_default=True)
@click.option("--sim-profile", default="debug", show_default=True)
@click.option("--ttft-ms", default=50.0, show_default=True, help="Fake upstream time to first token.")
@click.option("--itl-ms", default=20.0, show_default=True, help="Fake upstream time between tokens.")
@click.option("--chunks", default=33, show_default=True, help="Tokens (SSE events) per answer.")
@click.option(
    "--upstream-accept",
    type=click.Choice(["batch", "single"]),
    default="batch",
    show_default=True,
    help="Fake upstream: accept waiting connections in batches, or one per loop iteration (stock uvloop).",
)
@click.option("--peers", default="vllm_router", show_default=True, help="vllm_router,litellm ('' for none).")
@click.option(
    "--options",
    default="",
    show_default=True,
    help=f"Extra arms: our gateway with one server option each, of {', '.join(OPTIONS)}.",
)
@click.option("--pin/--no-pin", default=True, show_default=True, help="Pin client/upstream/proxy to cores.")
@click.option(
    "--reanalyse",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Measure nothing: recompute the statistics and verdicts of this result file from its stored runs "
    "(written to --out).",
)
def gateway(
    users: str,
    seconds: float,
    warmup: float,
    reps: int,
    out: str | None,
    md: str,
    upstream: str,
    sim_profile: str,
    ttft_ms: float,
    itl_ms: float,
    chunks: int,
    upstream_accept: str,
    peers: str,
    options: str,
    pin: bool,
    reanalyse: str | None,
) -> None:
    """Added TTFT and proxy CPU per request of our gateway vs vllm-router (and LiteLLM), over repetitions.

    Every repetition runs, per stream count, direct - each proxy (order rotated per repetition) - direct, so
    slow drift hits every arm alike and shows up as the difference of the two direct runs (the noise floor
    against which the TTFT targets are judged). CPU is the proxy process tree's user+system seconds
    (psutil), per request served."""
    from system.workload import load_prompts

    if reanalyse:
        doc = reanalysed(json.loads(Path(reanalyse).read_text()))
        doc["meta"]["reanalysed"] = {  # the runs are the measured ones; only the statistics were redone
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["expert-router", "bench", "gateway", *sys.argv[3:]]),
        }
        _write(Path(out), doc, md)
        return

    levels = [int(u) for u in users.split(",") if u.strip()]
    peer_names = [p.strip() for p in peers.split(",") if p.strip()]
    opt_names = [o.strip() for o in options.split(",") if o.strip()]
    unknown = [o for o in opt_names if o not in OPTIONS]
    if unknown:
        raise click.BadParameter(f"unknown option(s) {unknown}; choose from {list(OPTIONS)}")
    out_path = Path(out)
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
    runs: list[dict[str, Any]] = []
    try:
        ports = [free_port(), free_port()]
        ups = [f"http://127.0.0.1:{p}" for p in ports]
        if upstream == "fake":
            procs.append(
                start_fake_upstream(work, ports, ttft_ms, itl_ms, chunks, cores["upstream"], upstream_accept)
            )
            served = "fake-model"
        else:
            procs += [
                start_sim(work, p, f"sim{i}", sim_profile, cores["upstream"]) for i, p in enumerate(ports)
            ]
            served = "sim0"  # litellm forwards this name; sims check it, so litellm is only fair on sim0
        targets["direct"] = Target("direct", [u + "/v1/chat/completions" for u in ups])
        targets["gateway"] = start_our_gateway(work, ups, clf_dir, cores["proxy"])
        for o in opt_names:
            args, env, cfg = OPTIONS[o]
            name = f"gateway_{o}"
            targets[name] = start_our_gateway(work, ups, clf_dir, cores["proxy"], name, args, env, cfg)
        if "vllm_router" in peer_names:
            targets["vllm_router"] = start_vllm_router(work, ups, cores["proxy"])
        if "litellm" in peer_names:
            targets["litellm"] = start_litellm(work, ups, served, cores["proxy"])
        for t in targets.values():
            if t.error:
                click.echo(f"{t.name}: {t.error}", err=True)
        proxies = [t for t in targets.values() if not t.error and t.name != "direct"]
        # repetition-major: each repetition visits every level, so repetitions are spread over the run
        for rep in range(reps):
            rot = rep % max(1, len(proxies))
            order = [targets["direct"], *proxies[rot:], *proxies[:rot], targets["direct"]]
            for n in levels:
                for t in order:
                    res = run_load(work, t, n, seconds, warmup, bodies, cores["client"])
                    s = {"arm": t.name, "users": n, "rep": rep, **summarize(res)}
                    runs.append(s)
                    click.echo(
                        f"rep {rep} users={n:5d} {t.name:18s} "
                        f"ttft p50 {s.get('ttft_p50_ms', float('nan')):8.2f} "
                        f"p99 {s.get('ttft_p99_ms', float('nan')):8.2f} ms  tok/s {s['tokens_per_s']:9.1f}  "
                        f"cpu/req {s.get('cpu_us_per_request', 0):7.0f} us  errors {s['errors']}"
                    )
                    time.sleep(0.5)
    finally:
        for t in targets.values():
            if t.proc is not None:
                t.proc.stop()
        for p in procs:
            p.stop()

    arms = [t.name for t in targets.values() if not t.error and t.name != "direct"]
    doc: dict[str, Any] = {
        **clf_stats,
        "meta": {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host_cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "load_avg_end": [round(x, 2) for x in os.getloadavg()],
            "pinning": cores,
            "upstream": (
                f"fake_upstream x2 ports, ttft {ttft_ms} ms, itl {itl_ms} ms, {chunks} chunks, "
                f"{upstream_accept} accept"
                if upstream == "fake"
                else f"2 sims, profile {sim_profile}, {chunks} tokens"
            ),
            "users": levels,
            "reps": reps,
            "seconds": seconds,
            "warmup_s": warmup,
            "arms": arms,
            "options": {
                o: {"args": list(OPTIONS[o][0]), "env": OPTIONS[o][1], "config": OPTIONS[o][2]}
                for o in opt_names
            },
            "command": " ".join(["expert-router", "bench", "gateway", *sys.argv[3:]]),
            "speedups": speedups.MODE,  # the gateway's hot paths: "c" (system/_speedups.c) or "python (why)"
            "versions": {
                p: _version(p)
                for p in ("vllm-router", "litellm", "aiohttp", "uvicorn", "uvloop", "httptools", "fastapi")
            },
            "errors": {t.name: t.error for t in targets.values() if t.error},
        },
        "runs": runs,
    }
    _write(out_path, reanalysed(doc), md)


def reanalysed(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with its statistics, verdicts and flat keys (re)computed from `doc["runs"]` and `doc["meta"]`."""
    meta = doc["meta"]
    levels, arms = [int(n) for n in meta["users"]], meta["arms"]
    analysis = analyse(doc["runs"], levels, arms, meta["reps"])
    keep = {k: v for k, v in doc.items() if k.startswith("classifier_") or k in ("meta", "runs")}
    out: dict[str, Any] = {**analysis["flat"], **keep}
    out["verdicts"] = verdicts(analysis, levels, arms)
    out["targets_met"] = {k: v["verdict"] for k, v in out["verdicts"].items()}
    out["levels"] = analysis["levels"]
    return out


def _write(out_path: Path, doc: dict[str, Any], md: str) -> None:
    from system.bench._gateway_report import render_markdown

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2, default=str))
    click.echo(f"wrote {out_path}")
    for k, v in doc["verdicts"].items():
        est = v.get("ratio", v.get("margin_ms", {}).get("mean", v.get("mean")))
        click.echo(f"{k:60s} {v['verdict']:13s} {est}")
    if md:
        Path(md).parent.mkdir(parents=True, exist_ok=True)
        Path(md).write_text(render_markdown(doc))
        click.echo(f"wrote {md}")
