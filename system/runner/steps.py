"""One measured step: samplers on, Locust at constant users for the step, samplers off, step.json."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from system.records import read_records, record_files
from system.runner.config import Configuration, ExperimentConfig
from system.runner.manifest import write_json_atomic
from system.telemetry.dcgm import gpu_sampler
from system.telemetry.procs import ProcessSampler
from system.telemetry.prometheus import PrometheusScraper

# run_locust(host, users, spawn_rate, run_time_s, records_dir, *, workload, shape, processes, extra_args,
#            log_path, env) from system.bench._locust, or a stand-in with that signature (tests)
LocustFn = Callable[..., Any]
STEP_FILE = "step.json"
# Locust exits 1 when some requests failed: under overload that is a result, not a broken step
LOCUST_OK_CODES = (0, 1)


@dataclass(frozen=True)
class StepPlan:
    config: str
    topology: str
    users: int
    rep: int
    dir: Path


@dataclass
class StepContext:
    cfg: ExperimentConfig
    conf: Configuration
    stack: Any  # system.runner.stack.Stack (or a test double with the same attributes)
    locust_fn: LocustFn


def is_complete(step_dir: Path) -> bool:
    """A step is complete when its step.json (written atomically, last) says status "ok"."""
    try:
        return json.loads((step_dir / STEP_FILE).read_text()).get("status") == "ok"
    except (OSError, ValueError, AttributeError):
        return False


def kill_stale_load(records_dir: Path) -> list[int]:
    """Kill a Locust still writing into `records_dir` (its runner was killed; it runs in its own session)."""
    import psutil

    target = str(records_dir)
    killed = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if any(a == "--records-dir" and i + 1 < len(cmd) and cmd[i + 1] == target for i, a in enumerate(cmd)):
            with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
                pgid = os.getpgid(p.pid)
                if pgid == os.getpgid(0):  # never our own group
                    os.kill(p.pid, signal.SIGKILL)
                else:  # run_locust gives Locust its own group, which holds its --processes workers
                    os.killpg(pgid, signal.SIGKILL)
                killed.append(p.pid)
    return killed


def move_aside(step_dir: Path) -> Path | None:
    """A partial step directory (crash mid-step) goes to <config>/_incomplete/ so its records never mix in."""
    if not step_dir.exists():
        return None
    kill_stale_load(step_dir / "records")
    dest_root = step_dir.parent.parent / "_incomplete"
    dest_root.mkdir(parents=True, exist_ok=True)
    dest = dest_root / f"{step_dir.parent.name}-{step_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name}.{n}")
    shutil.move(str(step_dir), str(dest))
    return dest


def locust_arguments(
    cfg: ExperimentConfig, model: str, rep: int, ignore_eos: bool = True
) -> tuple[str, list[str]]:
    """(workload kind, extra Locust args): one prompt set everywhere, prompt order varied per repetition.

    `ignore_eos=False` when an engine rejects vLLM's `ignore_eos` extension (transformers serve answers 422).
    """
    spec = cfg.workload.to_spec(cfg.seed)
    kind = str(spec.pop("kind"))
    args = ["--model", model, "--num-prompts", str(spec.pop("n"))]
    # --seed orders prompts (same for every configuration at a given rep); seed=... fixes the prompt set
    args += ["--seed", str(cfg.seed + rep), "--workload-option", f"seed={spec.pop('seed')}"]
    path = spec.pop("path", None)
    if path:
        args += ["--dataset", str(path)]
    for key, value in spec.items():
        args += ["--workload-option", f"{key}={value}"]
    if not ignore_eos:
        args.append("--no-ignore-eos")
    return kind, [*args, *cfg.locust.extra_args]


def _returncode(result: Any) -> int | None:
    if result is None:
        return None
    if isinstance(result, int):
        return result
    for attr in ("returncode", "rc", "exit_code"):
        if hasattr(result, attr):
            return int(getattr(result, attr))
        if isinstance(result, dict) and attr in result:
            return int(result[attr])
    return None


def summarize_records(records_dir: Path) -> dict[str, Any]:
    files = record_files(records_dir)
    df = read_records(files)
    if len(df) == 0:
        return {"requests": 0, "successes": 0, "errors": 0, "record_files": len(files)}
    return {
        "requests": len(df),
        "successes": int(df["success"].sum()),
        "errors": int((~df["success"]).sum()),
        "record_files": len(files),
        "first_start_ts": float(df["start_ts"].min()),
        "last_end_ts": float(df["end_ts"].max()),
    }


def run_step(ctx: StepContext, step: StepPlan) -> dict[str, Any]:
    """Run one step into step.dir and return what was written to step.json (status "ok" or "failed")."""
    cfg, stack = ctx.cfg, ctx.stack
    move_aside(step.dir)
    records = step.dir / "records"
    records.mkdir(parents=True)
    tele = cfg.telemetry
    samplers = [
        PrometheusScraper(
            step.dir / "metrics.csv",
            stack.metrics_targets,
            tele.scrape_interval_s,
            tele.scrape_timeout_s,
            drop_suffixes=() if tele.keep_histogram_buckets else ("_bucket", "_created"),
        ),
        gpu_sampler(step.dir / "gpu.csv", tele, stack),  # NVML here, or DCGM exporters of a cluster
        ProcessSampler(step.dir / "procs.csv", stack.pids, tele.procs_interval_s),
    ]
    spawn_rate = cfg.spawn_rate_for(step.users)
    workload, extra = locust_arguments(cfg, stack.target_model, step.rep, stack.conf.accepts_ignore_eos)
    info: dict[str, Any] = {
        "config": step.config,
        "topology": step.topology,
        "users": step.users,
        "rep": step.rep,
        "warmup_s": cfg.warmup_s,
        "step_duration_s": cfg.step_duration_s,
        "spawn_rate": spawn_rate,
        "target_url": stack.target_url,
        "target_model": stack.target_model,
        "stack": stack.describe(),
    }
    message = ""
    rc: int | None = None
    for s in samplers:
        s.start()
    launch_ts = time.time()
    try:
        result = ctx.locust_fn(
            stack.target_url,
            step.users,
            spawn_rate,
            cfg.step_duration_s,
            records,
            workload=workload,
            shape=None,
            processes=cfg.locust.processes,
            extra_args=extra,
            log_path=step.dir / "locust.log",
            env=dict(cfg.locust.env) or None,
        )
        rc = _returncode(result)
        if getattr(result, "timed_out", False):
            message = f"locust overran its time limit and was killed (see {step.dir / 'locust.log'})"
        elif rc is not None and rc not in LOCUST_OK_CODES:
            message = f"locust exited with code {rc} (see {step.dir / 'locust.log'})"
    except Exception as e:  # the step fails, the run goes on
        message = f"load generator failed: {type(e).__name__}: {e}"
    finally:
        returned_ts = time.time()
        for s in samplers:
            s.stop()
    gpu = samplers[1]
    info["locust_returncode"] = rc
    info["gpu_note"] = gpu.note  # type: ignore[attr-defined]
    info["telemetry"] = {
        type(s).__name__: {"rows": s.rows_written, "errors": s.errors, "last_error": s.last_error}
        for s in samplers
    }
    rec = summarize_records(records)
    info.update(rec)
    # measurement window: from the first request sent (Locust's start-up is not load) to the end of the
    # configured duration; Locust's shutdown (cancelling in-flight requests) is outside it
    start_ts = rec.get("first_start_ts", launch_ts)
    if not isinstance(start_ts, float) or math.isnan(start_ts):
        start_ts = launch_ts
    info.update(
        launch_ts=launch_ts,
        returned_ts=returned_ts,
        start_ts=start_ts,
        end_ts=min(returned_ts, start_ts + cfg.step_duration_s),
    )
    dead = stack.dead()
    if not message and dead:
        message = "server(s) died during the step: " + "; ".join(f"{n}: {t}" for n, t in dead.items())
    if not message and rec["requests"] == 0:
        message = f"no request records were written (see {step.dir / 'locust.log'})"
    info["status"] = "failed" if message else "ok"
    info["message"] = message
    write_json_atomic(step.dir / "step.json", info)  # last: marks the step complete
    return info
