"""`expert-router bench records`: how the results directory and the analysis scale with requests.

Synthetic records (the RequestRecord schema, ~64 streamed tokens each, like the accuracy bench) are written
through `system.records.RecordWriter` into a run directory of 10 steps, then read back with
`analysis.load.load_runs` and summarised with `analysis.metrics.summarize` (what the report does). Each stage
runs in a fresh interpreter, so its peak RSS (getrusage maxrss minus the RSS after imports) is its own.
Per-million-record costs are straight-line fits over the sizes, with their leave-one-out error.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from system.bench._out import local_out

DEFAULT_OUT = local_out("records.json")
CONFIGS = (("routed", "routed"), ("single", "single"))
USERS = (10, 50, 100, 500, 1000)  # 2 configs x 5 user counts = 10 steps
STEP_S = 120.0


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def write_run(run: Path, n: int, seed: int = 0) -> float:
    """A complete run directory with `n` synthetic records spread evenly over 10 steps; returns the CPU
    seconds spent inside RecordWriter (generating the records is not counted)."""
    from system.records import RecordWriter, RequestRecord
    from system.runner.manifest import write_json_atomic

    rng = np.random.default_rng(seed)
    write_json_atomic(
        run / "manifest.json", {"experiment": "records-scale", "config": {"slos": {"ttft_ms": 500}}}
    )
    steps = [(c, t, u) for c, t in CONFIGS for u in USERS]
    per_step = [n // len(steps) + (1 if i < n % len(steps) else 0) for i in range(len(steps))]
    t_base = 1.7e9
    writer_cpu_s = 0.0
    for (config, topology, users), count in zip(steps, per_step, strict=True):
        experts = ["e0", "e1", "e2", "e3"] if topology == "routed" else ["big"]
        write_json_atomic(run / config / "config.json", {"name": config, "topology": topology})
        d = run / config / f"users={users}" / "rep=0"
        start = t_base
        out_tokens = rng.integers(32, 97, size=count)
        starts = start + rng.uniform(0, STEP_S, size=count)
        gaps = rng.gamma(4.0, 0.005, size=int((out_tokens - 1).sum()))
        bounds = np.concatenate(([0], np.cumsum(out_tokens - 1)))
        ttfts = rng.gamma(2.0, 0.05, size=count)
        recs = []
        for i in range(count):
            k = int(out_tokens[i])
            itl = gaps[bounds[i] : bounds[i + 1]]
            ttft = float(ttfts[i])
            rec = RequestRecord(
                request_id=f"{config}-{users}-{i}",
                endpoint="/v1/chat/completions",
                model="auto",
                start_ts=float(starts[i]),
                ttft_s=ttft,
                e2e_s=ttft + float(itl.sum()),
                itl_s=itl.tolist(),
                prompt_tokens=20 + (i * 37) % 380,
                output_tokens=k,
                tokens_from_usage=True,
                expert=experts[i % len(experts)],
                cluster=i % len(experts),
                policy="cluster",
                gateway_overhead_ms=0.3,
                status=200,
                success=True,
                workload="labelled",
                label="code",
                user_id=i % users,
                worker_id="0",
                client_cpu_percent=20.0,
                client_loop_lag_ms=1.0,
            )
            rec.end_ts = rec.start_ts + rec.e2e_s
            rec.finish_derived()
            recs.append(rec)
        # only the writer is timed: what Locust pays per finished request
        c0 = _cpu_s()
        with RecordWriter(d / "records" / "records-0.csv", flush_every_s=1.0) as w:
            for rec in recs:
                w.write(rec)
        writer_cpu_s += _cpu_s() - c0
        step = {"config": config, "topology": topology, "users": users, "rep": 0, "status": "ok"}
        step.update(start_ts=start, end_ts=start + STEP_S, warmup_s=10.0)
        write_json_atomic(d / "step.json", step)
        t_base += STEP_S + 10
    return writer_cpu_s


def stage(name: str, run: Path, n: int) -> dict[str, Any]:
    """Run one stage here (in the child) and measure it."""
    import pandas  # noqa: F401 - imported before the baseline, like any analysis session

    import analysis.load as aload
    import analysis.metrics as ametrics

    base_rss, cpu0, t0 = _maxrss_mb(), _cpu_s(), time.perf_counter()
    rows, writer_cpu_s = 0, math.nan
    if name == "write":
        writer_cpu_s = write_run(run, n)
    elif name == "load":
        rows = len(aload.load_runs(run))
    elif name == "summarize":
        data = aload.load_all(run)
        summary = ametrics.summarize(
            data.records, data.steps, {"ttft_ms": 500}, gpu=data.gpu, metrics=data.metrics
        )
        rows = len(data.records)
        assert len(summary) == len(CONFIGS) * len(USERS)
    else:
        raise ValueError(name)
    return {
        "stage": name,
        "records": n,
        "rows": rows,
        "cpu_s": _cpu_s() - cpu0 if name != "write" else writer_cpu_s,
        "wall_s": time.perf_counter() - t0,
        "peak_rss_mb": _maxrss_mb(),
        "rss_after_imports_mb": base_rss,
        "added_peak_rss_mb": _maxrss_mb() - base_rss,
    }


def run_child(name: str, run: Path, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "system.bench.records_scale", name, str(run), str(n)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise click.ClickException(f"stage {name} at {n} records failed:\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def fit_per_million(x: list[float], y: list[float]) -> dict[str, float]:
    """y = a + b x (x in records): b per million, intercept, leave-one-out RMS and relative error."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    b, a = np.polyfit(xa, ya, 1)
    loo = []
    for i in range(len(xa)):
        m = np.ones(len(xa), dtype=bool)
        m[i] = False
        if len(set(xa[m])) < 2:
            continue
        bi, ai = np.polyfit(xa[m], ya[m], 1)
        loo.append(float(ya[i] - (ai + bi * xa[i])))
    la = np.asarray(loo)
    return {
        "per_million": float(b * 1e6),
        "intercept": float(a),
        "loo_rmse": float(np.sqrt(np.mean(la**2))) if la.size else math.nan,
        "loo_rel_error": float(np.mean(np.abs(la) / np.maximum(np.abs(ya[: la.size]), 1e-9)))
        if la.size
        else math.nan,
    }


@click.command("records")
@click.option("--sizes", default="50000,100000,200000", show_default=True, help="Record counts.")
@click.option("--reps", type=click.IntRange(min=1), default=3, show_default=True, help="Reads per size.")
@click.option("--out", default=DEFAULT_OUT, show_default=True, help="JSON result file.")
def records(sizes: str, reps: int, out: str) -> None:
    """Disk bytes, write/read/summarize CPU time and peak memory per million records."""
    from system.bench.accuracy import machine, write_json

    ns = sorted({int(s) for s in sizes.split(",") if s.strip()})
    if len(ns) < 3 or ns[0] < 1000:
        raise click.BadParameter("--sizes needs >= 3 distinct counts >= 1000 (the fit reports LOO error)")
    samples: list[dict[str, Any]] = []
    load_start = list(os.getloadavg())
    for n in ns:
        with tempfile.TemporaryDirectory(prefix="bench-records-") as tmp:
            run = Path(tmp) / "run"
            w = run_child("write", run, n)
            files = list(run.rglob("*"))
            w["disk_bytes"] = sum(f.stat().st_size for f in files if f.is_file())
            w["record_bytes"] = sum(f.stat().st_size for f in files if f.name.startswith("records-"))
            samples.append(w)
            click.echo(
                f"{n} records: wrote {w['disk_bytes'] / 1e6:.0f} MB in {w['cpu_s']:.1f} CPU s", err=True
            )
            for _ in range(reps):
                for name in ("load", "summarize"):
                    s = run_child(name, run, n)
                    samples.append(s)
                    click.echo(
                        f"  {name}: {s['cpu_s']:.1f} CPU s, +{s['added_peak_rss_mb']:.0f} MB peak", err=True
                    )

    def fit(stage_name: str, key: str) -> dict[str, float]:
        rs = [s for s in samples if s["stage"] == stage_name]
        return fit_per_million([s["records"] for s in rs], [s[key] for s in rs])

    result = {
        "benchmark": "records",
        "machine": machine(),
        "settings": {
            "sizes": ns,
            "reps": reps,
            "steps": len(CONFIGS) * len(USERS),
            "tokens_per_record": "uniform 32-96 (mean 64), one inter-token gap per token in itl_s",
        },
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "disk_mb_per_million": fit("write", "disk_bytes")["per_million"] / 1e6,
        "disk_bytes_fit": fit("write", "disk_bytes"),
        "write_cpu_s": fit("write", "cpu_s"),
        "load_cpu_s": fit("load", "cpu_s"),
        "load_peak_mb": fit("load", "added_peak_rss_mb"),
        "summarize_cpu_s": fit("summarize", "cpu_s"),
        "summarize_peak_mb": fit("summarize", "added_peak_rss_mb"),
        "samples": samples,
    }
    write_json(out, result)
    click.echo(f"wrote {out}")


if __name__ == "__main__":
    # child mode: python -m system.bench.records_scale STAGE RUN_DIR N
    print(json.dumps(stage(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
