"""One measured step: samplers on, Locust (closed-loop users or an open-loop rate) for the step, step.json."""

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
from system.runner.config import AUTO_RAMP_S, Configuration, ExperimentConfig
from system.runner.manifest import write_json_atomic
from system.runner.stepstats import median_e2e_s, step_figures
from system.telemetry.dcgm import gpu_sampler
from system.telemetry.procs import ProcessSampler
from system.telemetry.prometheus import PrometheusScraper
from system.telemetry.simgpu import SimGpuSampler

# run_locust(host, users, spawn_rate, run_time_s, records_dir, *, workload, shape, processes, extra_args,
#            log_path, env[, open_loop]) from system.runner.locust, or a stand-in with that signature (tests);
# open_loop is passed only for rate steps
LocustFn = Callable[..., Any]
STEP_FILE = "step.json"
# Locust exits 1 when some requests failed: under overload that is a result, not a broken step
LOCUST_OK_CODES = (0, 1)
# an auto warm-up never takes more than this share of the step (the step is flagged `warmup_capped`)
AUTO_WARMUP_MAX_SHARE = 0.5
LATE_SHARE_FLAG = 0.05  # open loop: flag a step when more than 5 % of its arrivals left late


def rate_label(rate: float) -> str:
    """A rate as it appears in directory names (contract: format(R, "g"))."""
    return format(float(rate), "g")


@dataclass(frozen=True)
class StepPlan:
    config: str
    topology: str
    load_kind: str  # "users" | "rate"
    load: float  # users, or requests/s
    rep: int
    dir: Path
    max_concurrency: int | None = None
    burstiness: float = 1.0
    sweep_phase: str | None = None  # "synchronous" | "throughput" | "interpolated" | None

    @property
    def users(self) -> int | None:
        return int(self.load) if self.load_kind == "users" else None

    @property
    def rate(self) -> float | None:
        return float(self.load) if self.load_kind == "rate" else None

    @property
    def label(self) -> str:
        """`users=N` or `rate=R`: the step's directory name under its configuration."""
        return f"users={int(self.load)}" if self.load_kind == "users" else f"rate={rate_label(self.load)}"


def step_plan(
    conf: Configuration,
    run_dir: Path,
    load_kind: str,
    load: float,
    rep: int,
    *,
    max_concurrency: int | None = None,
    burstiness: float = 1.0,
    sweep_phase: str | None = None,
) -> StepPlan:
    probe = StepPlan(conf.name, conf.topology, load_kind, float(load), rep, Path())
    return StepPlan(
        conf.name,
        conf.topology,
        load_kind,
        float(load),
        rep,
        run_dir / conf.name / probe.label / f"rep={rep}",
        max_concurrency=max_concurrency if load_kind == "rate" else None,
        burstiness=burstiness if load_kind == "rate" else 1.0,
        sweep_phase=sweep_phase,
    )


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
    return summarize_frame(read_records(record_files(records_dir)), len(record_files(records_dir)))


def summarize_frame(df: Any, files: int) -> dict[str, Any]:
    if len(df) == 0:
        return {"requests": 0, "successes": 0, "errors": 0, "cut": 0, "record_files": files}
    return {
        "requests": len(df),
        "successes": int((df["outcome"] == "ok").sum()),
        "errors": int((df["outcome"] == "error").sum()),
        "cut": int((df["outcome"] == "cut").sum()),
        "record_files": files,
        "first_start_ts": float(df["start_ts"].min()),
        "last_end_ts": float(df["end_ts"].max()),
    }


def aggregate_arrivals(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The open-loop reports of every Locust process as one: what the schedule asked and what was sent."""
    if not reports:
        return None

    def total(key: str) -> int:
        return int(sum(int(r.get(key, 0) or 0) for r in reports))

    elapsed = max(float(r.get("elapsed_s", 0.0) or 0.0) for r in reports)
    sent = total("sent")
    p99 = [float(r["lateness_p99_ms"]) for r in reports if _finite(r.get("lateness_p99_ms"))]
    return {
        "target_rate_rps": float(reports[0].get("target_rate_rps", math.nan)),
        "achieved_rate_rps": sent / elapsed if elapsed > 0 else math.nan,
        "schedule_s": elapsed,
        "workers": len(reports),
        "due": total("due"),
        "sent": sent,
        "dropped": total("dropped"),
        "cut": total("cut"),
        "late_concurrency": total("late_concurrency"),
        "late_client": total("late_client"),
        "late_ms_threshold": float(reports[0].get("late_ms_threshold", math.nan)),
        "lateness_p99_ms": max(p99) if p99 else math.nan,
        "max_in_flight": total("max_in_flight"),
    }


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def effective_warmup(cfg: ExperimentConfig, step: StepPlan, spawn_rate: float, median_e2e: float) -> dict:
    """warmup_s of this step: the configured number, or "auto" = max(spawn ramp, median E2E), capped."""
    ramp = (step.load / spawn_rate) if step.load_kind == "users" else 0.0
    flags: list[str] = []
    if cfg.warmup_s != "auto":
        w = float(cfg.warmup_s)
        if _finite(median_e2e) and w < median_e2e:
            flags.append("warmup_below_median_e2e")
        return {"warmup_s": w, "warmup_source": "config", "warmup_flags": flags}
    w = max(ramp, median_e2e if _finite(median_e2e) else 0.0)
    cap = AUTO_WARMUP_MAX_SHARE * cfg.step_duration_s
    if w > cap:
        w = cap
        flags.append("warmup_capped")
    return {"warmup_s": w, "warmup_source": "auto", "warmup_flags": flags}


def load_flags(arrivals: dict[str, Any] | None) -> list[str]:
    """Open-loop problems of a step: arrivals never sent, or sent late (by the cap or a starved client)."""
    if not arrivals:
        return []
    flags = []
    sent = max(int(arrivals["sent"]), 1)
    if arrivals["dropped"] > 1:  # one arrival due at the very moment the step stopped is a race, not a drop
        flags.append("arrivals_dropped")
    if arrivals["late_concurrency"] > LATE_SHARE_FLAG * sent:
        flags.append("arrivals_late_concurrency")
    if arrivals["late_client"] > LATE_SHARE_FLAG * sent:
        flags.append("arrivals_late_client")
    return flags


def progress_line(step: StepPlan, info: dict[str, Any]) -> str:
    """One short line per finished step for the console."""
    parts = [f"[{step.config}] {step.label} rep={step.rep}"]
    if step.sweep_phase:
        parts[0] += f" ({step.sweep_phase})"
    if info.get("status") != "ok":
        return f"{parts[0]}: FAILED: {info.get('message', '')}"
    fig = info.get("figures", {})
    parts.append(
        f"{info.get('requests', 0)} req ({info.get('errors', 0)} err, {info.get('cut', 0)} cut), "
        f"{fig.get('req_per_s', math.nan):.2f} req/s, {fig.get('tok_per_s', math.nan):.0f} tok/s"
    )
    if _finite(fig.get("ttft_p50_ms")):
        parts.append(f"TTFT p50 {fig['ttft_p50_ms']:.0f} ms")
    arr = info.get("arrivals")
    if arr:
        parts.append(f"sent {arr['achieved_rate_rps']:.2f}/s of {arr['target_rate_rps']:g}/s")
    parts.append(f"warm-up {info.get('warmup_s', 0.0):.1f} s")
    flags = info.get("load_flags") or []
    if flags:
        parts.append("FLAGS " + ",".join(flags))
    return ": ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if len(parts) > 2 else "")


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
        # sim stacks: the simulated GPUs (source "sim"); otherwise NVML here, or DCGM exporters of a cluster
        SimGpuSampler(step.dir / "gpu.csv", stack.sim_gpu_urls(), tele.gpu_interval_s)
        if stack.sim_gpu_urls() and not stack.gpus()
        else gpu_sampler(step.dir / "gpu.csv", tele, stack),
        ProcessSampler(step.dir / "procs.csv", stack.pids, tele.procs_interval_s),
    ]
    closed = step.load_kind == "users"
    spawn_rate = cfg.spawn_rate_for(int(step.load)) if closed else None
    workload, extra = locust_arguments(cfg, stack.target_model, step.rep, stack.conf.accepts_ignore_eos)
    info: dict[str, Any] = {
        "config": step.config,
        "topology": step.topology,
        "load_kind": step.load_kind,
        "load": step.load,
        "users": step.users,
        "request_rate": step.rate,
        "max_concurrency": step.max_concurrency,
        "burstiness": step.burstiness,
        "sweep_phase": step.sweep_phase,
        "rep": step.rep,
        "warmup_s": None,  # set below, once the step's median E2E is known (warmup_s auto)
        "warmup_config": cfg.warmup_s,
        "step_duration_s": cfg.step_duration_s,
        "spawn_rate": spawn_rate,
        "target_url": stack.target_url,
        "target_model": stack.target_model,
        "stack": stack.describe(),
    }
    message = ""
    rc: int | None = None
    result: Any = None
    kwargs: dict[str, Any] = {}
    if not closed:
        from system.runner.locust import OpenLoop

        kwargs["open_loop"] = OpenLoop(step.load, step.max_concurrency, step.burstiness)
    for s in samplers:
        s.start()
    launch_ts = time.time()
    try:
        result = ctx.locust_fn(
            stack.target_url,
            int(step.load) if closed else cfg.locust.processes,
            spawn_rate if closed else float(cfg.locust.processes),
            cfg.step_duration_s,
            records,
            workload=workload,
            shape=None,
            processes=cfg.locust.processes,
            extra_args=extra,
            log_path=step.dir / "locust.log",
            env=dict(cfg.locust.env) or None,
            **kwargs,
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
    info["gpu_note"] = getattr(gpu, "note", "")  # SimGpuSampler has none: an empty note
    info["telemetry"] = {
        type(s).__name__: {"rows": s.rows_written, "errors": s.errors, "last_error": s.last_error}
        for s in samplers
    }
    files = record_files(records)
    df = read_records(files)
    rec = summarize_frame(df, len(files))
    info.update(rec)
    # measurement window: from the first request sent (Locust's start-up is not load) to the end of the
    # configured duration; Locust's shutdown (cutting in-flight requests) is outside it
    start_ts = rec.get("first_start_ts", launch_ts)
    if not isinstance(start_ts, float) or math.isnan(start_ts):
        start_ts = launch_ts
    end_ts = min(returned_ts, start_ts + cfg.step_duration_s)
    info.update(launch_ts=launch_ts, returned_ts=returned_ts, start_ts=start_ts, end_ts=end_ts)
    med = median_e2e_s(df)
    warm = effective_warmup(cfg, step, spawn_rate or AUTO_RAMP_S, med)
    info["median_e2e_s"] = med if _finite(med) else None
    info["warmup_s"] = warm["warmup_s"]
    info["warmup_source"] = warm["warmup_source"]
    from system.runner.locust import read_arrivals

    arrivals = aggregate_arrivals(getattr(result, "arrivals", None) or read_arrivals(records))
    info["arrivals"] = arrivals
    info["load_flags"] = warm["warmup_flags"] + load_flags(arrivals)
    slos = cfg.slos.model_dump()
    info["figures"] = step_figures(df, (start_ts + warm["warmup_s"], end_ts), slos)
    dead = stack.dead()
    if not message and dead:
        message = "server(s) died during the step: " + "; ".join(f"{n}: {t}" for n, t in dead.items())
    if not message and rec["requests"] == 0:
        message = f"no request records were written (see {step.dir / 'locust.log'})"
    info["status"] = "failed" if message else "ok"
    info["message"] = message
    write_json_atomic(step.dir / "step.json", _json_safe(info))  # last: marks the step complete
    return info


def _json_safe(v: Any) -> Any:
    """NaN/inf become null: step.json stays strict JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v
