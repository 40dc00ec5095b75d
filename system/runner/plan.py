"""`--dry-run`: the plan of an experiment (configurations, servers and their commands, steps) as text."""

from __future__ import annotations

import shlex
from pathlib import Path

from system.runner.config import ExperimentConfig, RateLoad, SweepLoad, UsersLoad
from system.runner.runner import plan_steps, unplanned_steps
from system.runner.stack import plan_stack
from system.runner.steps import is_complete, locust_arguments
from system.runner.training import classifier_plan

# seconds per step beyond its duration: Locust start/stop and record summary (measured: ~2-4 s on 2 cores)
STEP_OVERHEAD_S = 4.0


def _cmd(cmd: list[str], env: dict[str, str]) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return (prefix + " " if prefix else "") + shlex.join(cmd)


def describe_plan(cfg: ExperimentConfig, run_dir: Path, only: list[str] | None = None) -> str:
    """Human-readable plan; nothing is started. Ports shown are examples (free ones are picked later)."""
    confs = cfg.select(only)
    warm = "auto: max(ramp, median E2E)" if cfg.warmup_s == "auto" else f"{cfg.warmup_s:g} s"
    lines = [
        f"experiment {cfg.name} -> {run_dir}",
        f"  workload {cfg.workload.to_spec(cfg.seed)}",
        f"  load {describe_load(cfg)} x {cfg.repetitions} repetition(s); step {cfg.step_duration_s:g} s "
        f"(warm-up {warm}, cool-down {cfg.cooldown_s:g} s); "
        f"Locust processes {cfg.locust.processes}",
        f"  SLOs {cfg.slos.model_dump(exclude_none=True) or 'none'}",
    ]
    total_pending = 0
    for conf in confs:
        steps = plan_steps(cfg, conf, run_dir)
        pending = [s for s in steps if not is_complete(s.dir)]
        total_pending += len(pending)
        via = "via gateway" if conf.uses_gateway else "direct to the engine"
        lines.append(f"configuration {conf.name}: {conf.topology}, {len(conf.experts)} expert(s), {via}")
        if conf.uses_gateway and not conf.gateway.external:
            lines.append(f"  policy {conf.gateway.policy}")
        clf = classifier_plan(cfg, conf)
        if clf:
            lines.append(f"  classifier {clf}")
        dcgm = [t.url for t in [*cfg.telemetry.dcgm, *conf.dcgm]]
        if dcgm:
            lines.append(f"  gpu.csv from DCGM exporters {dcgm}")
        ports = [*range(9001, 9001 + len(conf.experts)), 8000]
        servers = plan_stack(
            conf, seed=cfg.seed, ports=ports, gateway_config_path=run_dir / conf.name / "gateway.yaml"
        )
        for s in servers:
            if s.launch.external:  # nothing started: polled at s.launch.health_url, model discovered
                model = s.launch.served_model or "discovered from /v1/models"
                lines.append(f"  {s.role} {s.name}: external {s.launch.base_url} (model {model})")
                continue
            lines.append(f"  {s.role} {s.name}: {_cmd(s.launch.cmd, s.launch.env)}")
        target = next(s for s in servers if s.role == ("gateway" if conf.uses_gateway else "expert"))
        model = target.launch.served_model or "<discovered>"
        workload, extra = locust_arguments(cfg, model, 0, conf.accepts_ignore_eos)
        lines.append(
            f"  locust: host {target.launch.base_url}, workload {workload}, "
            f"processes {cfg.locust.processes}, args {shlex.join(extra)}"
        )
        for s in steps:
            state = "done" if s not in pending else "pending"
            how = (
                f"spawn_rate={cfg.spawn_rate_for(int(s.load)):g}/s"
                if s.load_kind == "users"
                else f"max_concurrency={s.max_concurrency} burstiness={s.burstiness:g}"
            )
            phase = f" ({s.sweep_phase})" if s.sweep_phase else ""
            lines.append(f"    {s.label} rep={s.rep}{phase} {how}  [{state}]  {s.dir}")
        later = unplanned_steps(cfg, conf, run_dir)
        if later:
            total_pending += later
            lines.append(
                f"    + {later} interpolated rate step(s): rates planned from the probes' measured request "
                f"rates, written to {run_dir / conf.name / 'sweep.json'}"
            )
    per_step = cfg.step_duration_s + STEP_OVERHEAD_S + cfg.cooldown_s
    est = total_pending * per_step
    lines.append(
        f"{total_pending} step(s) to run, about {est / 60:.1f} min plus stack start-up per configuration"
    )
    return "\n".join(lines)


def describe_load(cfg: ExperimentConfig) -> str:
    load = cfg.load
    if isinstance(load, UsersLoad):
        return f"users {load.users} (closed loop)"
    if isinstance(load, RateLoad):
        return (
            f"rates {load.rates} req/s (open loop, max_concurrency {load.max_concurrency}, "
            f"burstiness {load.burstiness:g})"
        )
    assert isinstance(load, SweepLoad)
    probe = (
        f"rate {load.throughput_rate:g}/s"
        if load.throughput_rate is not None
        else f"{load.throughput_users} users"
    )
    stop = load.stop.model_dump(exclude_none=True) or "none"
    return (
        f"sweep: synchronous (1 user), throughput ({probe}), {load.rates} rates between "
        f"(max_concurrency {load.max_concurrency}, burstiness {load.burstiness:g}, early stop {stop})"
    )
