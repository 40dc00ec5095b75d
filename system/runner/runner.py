"""The experiment runner: per configuration, bring the stack up and run every load step x repetition."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from system.processes import ServerStartError
from system.runner.config import Configuration, ExperimentConfig, RateLoad, SweepLoad, UsersLoad
from system.runner.manifest import build_manifest, read_json, write_json_atomic
from system.runner.stack import Stack
from system.runner.steps import (
    STEP_FILE,
    LocustFn,
    StepContext,
    StepPlan,
    is_complete,
    progress_line,
    run_step,
    step_plan,
)
from system.runner.sweep import probe_steps, rate_steps, read_sweep, run_sweep, sweep_done
from system.runner.training import ensure_classifier


class RunError(RuntimeError):
    """The run cannot go on (a stack failed to start, the run dir belongs to another config, ...)."""


@dataclass
class RunSummary:
    run_dir: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def default_run_dir(cfg: ExperimentConfig, root: str | Path = "results") -> Path:
    return Path(root) / cfg.name / time.strftime("%Y%m%d-%H%M%S")


def plan_steps(cfg: ExperimentConfig, conf: Configuration, run_dir: Path) -> list[StepPlan]:
    """Steps in run order, each repeated `repetitions` times: users or rates as listed; for a sweep the
    probes plus the rates already planned in sweep.json (the rest are planned once the probes ran)."""
    load = cfg.load
    reps = range(cfg.repetitions)
    if isinstance(load, UsersLoad):
        return [step_plan(conf, run_dir, "users", u, r) for u in load.users for r in reps]
    if isinstance(load, RateLoad):
        return [
            step_plan(
                conf, run_dir, "rate", x, r, max_concurrency=load.max_concurrency, burstiness=load.burstiness
            )
            for x in load.rates
            for r in reps
        ]
    assert isinstance(load, SweepLoad)
    steps = probe_steps(cfg, conf, run_dir)
    doc = read_sweep(run_dir / conf.name) or {}
    if doc.get("fingerprint") == cfg.fingerprint():
        for rate in doc.get("rates") or []:
            steps += rate_steps(cfg, conf, run_dir, float(rate))
    return steps


def unplanned_steps(cfg: ExperimentConfig, conf: Configuration, run_dir: Path) -> int:
    """Steps a sweep will plan once its probes ran (0 for users/rate loads and planned sweeps)."""
    load = cfg.load
    if not isinstance(load, SweepLoad):
        return 0
    doc = read_sweep(run_dir / conf.name) or {}
    if doc.get("fingerprint") == cfg.fingerprint() and doc.get("rates"):
        return 0
    return load.rates * cfg.repetitions


def config_record(cfg: ExperimentConfig, conf: Configuration) -> dict[str, Any]:
    """config.json: the resolved configuration plus the experiment-level settings analysis needs."""
    data = conf.model_dump(mode="json")
    data["experiment"] = cfg.name
    data["workload"] = cfg.workload.to_spec(cfg.seed)
    data["slos"] = cfg.slos.model_dump(mode="json")
    data["step_duration_s"] = cfg.step_duration_s
    data["warmup_s"] = cfg.warmup_s  # a number, or "auto" (each step.json holds the value used)
    # the load kind and its settings; the step lists may grow on resume (as the users list always could)
    lists = (
        {"users"}
        if isinstance(cfg.load, UsersLoad)
        else {"rates"}
        if isinstance(cfg.load, RateLoad)
        else set()
    )
    data["load"] = cfg.load.model_dump(mode="json", exclude=lists)
    return data


class ExperimentRunner:
    """Runs (or resumes) an experiment into `run_dir`; `locust_fn` defaults to runner.locust.run_locust."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: str | Path,
        *,
        only: list[str] | None = None,
        locust_fn: LocustFn | None = None,
        progress: bool = True,
        force_resume: bool = False,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.configs = cfg.select(only)
        self.only = only
        self._locust_fn = locust_fn
        self.progress = progress
        self.force_resume = force_resume
        self.echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
        self._bar_ref: Any = None
        self._manifest: dict[str, Any] | None = None

    @property
    def locust_fn(self) -> LocustFn:
        if self._locust_fn is None:
            from system.runner.locust import run_locust

            self._locust_fn = run_locust
        return self._locust_fn

    # ------------------------------------------------------------------ bookkeeping
    def _open_manifest(self) -> dict[str, Any]:
        path = self.run_dir / "manifest.json"
        fp = self.cfg.fingerprint()
        if path.exists():
            manifest = read_json(path)
            if manifest.get("config_fingerprint") != fp and not self.force_resume:
                raise RunError(
                    f"{self.run_dir} was run with a different experiment config (fingerprint "
                    f"{manifest.get('config_fingerprint')} != {fp}); use a new --out, or --force-resume "
                    "to mix results knowingly"
                )
            manifest["config"] = self.cfg.resolved()
            manifest["config_fingerprint"] = fp
        else:
            manifest = build_manifest(self.cfg.resolved(), fingerprint=fp)
        manifest["status"] = "running"
        manifest.setdefault("runs", []).append(
            {"started_ts": time.time(), "argv": sys.argv, "only": self.only}
        )
        write_json_atomic(path, manifest)
        return manifest

    def _close_manifest(
        self, manifest: dict[str, Any], status: str, summary: RunSummary, message: str
    ) -> None:
        now = time.time()
        manifest["ended_ts"] = now
        manifest["status"] = status
        manifest["runs"][-1].update(
            ended_ts=now,
            status=status,
            ok=summary.ok,
            failed=summary.failed,
            skipped=summary.skipped,
            message=message,
        )
        write_json_atomic(self.run_dir / "manifest.json", manifest)

    def _check_config_json(self, conf: Configuration) -> None:
        path = self.run_dir / conf.name / "config.json"
        record = config_record(self.cfg, conf)
        if path.exists() and not self.force_resume:
            old = read_json(path)
            if old != record:
                raise RunError(
                    f"configuration {conf.name!r} in {self.run_dir} was run with different settings "
                    f"({path}); use a new --out, or --force-resume"
                )
        write_json_atomic(path, record)

    # ------------------------------------------------------------------ running
    def run(self) -> RunSummary:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        manifest = self._open_manifest()
        self._manifest = manifest
        summary = RunSummary(self.run_dir)
        plans = {c.name: plan_steps(self.cfg, c, self.run_dir) for c in self.configs}
        pending = {name: [s for s in steps if not is_complete(s.dir)] for name, steps in plans.items()}
        unplanned = {c.name: unplanned_steps(self.cfg, c, self.run_dir) for c in self.configs}
        done = sum(len(plans[n]) - len(pending[n]) for n in plans)
        if done:
            self.echo(f"resuming {self.run_dir}: {done} completed step(s) skipped")
        bar = self._bar(sum(len(v) for v in pending.values()) + sum(unplanned.values()))
        self._bar_ref = bar
        status, message = "ok", ""
        try:
            for conf in self.configs:
                self._check_config_json(conf)
                todo = pending[conf.name] or unplanned[conf.name]
                if isinstance(self.cfg.load, SweepLoad):
                    todo = todo or not sweep_done(self.cfg, conf, self.run_dir)
                if todo:
                    self._run_configuration(conf, plans[conf.name], summary, bar)
                else:
                    summary.skipped += len(plans[conf.name])
            if summary.failed:
                status, message = "failed", f"{summary.failed} step(s) failed"
        except KeyboardInterrupt:
            status, message = "interrupted", "interrupted (Ctrl-C); re-run with the same --out to resume"
            raise
        except (ServerStartError, RunError) as e:
            status, message = "failed", str(e)
            raise
        except BaseException as e:
            status, message = "failed", f"{type(e).__name__}: {e}"
            raise
        finally:
            if bar is not None:
                bar.close()
            self._bar_ref = None
            self._close_manifest(manifest, status, summary, message)
        from analysis.summary import print_summary  # end-of-run table + summary.json (never raises)

        print_summary(self.run_dir, echo=self.echo)
        return summary

    def say(self, line: str) -> None:
        """A console line that does not tear the progress bar."""
        bar = getattr(self, "_bar_ref", None)
        if bar is not None:
            bar.write(line, file=sys.stderr)
        else:
            self.echo(line)

    def _bar(self, total: int) -> Any:
        if not self.progress or total == 0:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit="step", dynamic_ncols=True, file=sys.stderr)

    def _record_endpoints(self, conf_name: str, endpoints: dict[str, Any]) -> None:
        """External servers (version, models) into manifest.json `endpoints.<config>.<server>`."""
        if not endpoints or self._manifest is None:
            return
        self._manifest.setdefault("endpoints", {})[conf_name] = endpoints
        write_json_atomic(self.run_dir / "manifest.json", self._manifest)

    def _run_configuration(
        self, conf: Configuration, steps: list[StepPlan], summary: RunSummary, bar: Any
    ) -> None:
        conf_dir = self.run_dir / conf.name
        classifier_dir = ensure_classifier(self.cfg, conf, conf_dir, echo=self.echo)
        self.say(
            f"[{conf.name}] starting {len(conf.experts)} expert(s)"
            + (" + gateway" if conf.uses_gateway else "")
        )
        stack = Stack(conf, work_dir=conf_dir, seed=self.cfg.seed, classifier_dir=classifier_dir)
        try:
            stack.start()
        except ServerStartError as e:
            raise ServerStartError(f"configuration {conf.name!r}: stack failed to start: {e}") from e
        try:
            if stack.stale_killed:
                self.say(
                    f"[{conf.name}] killed {len(stack.stale_killed)} server(s) left by an interrupted run"
                )
            self.say(f"[{conf.name}] up: target {stack.target_url} (model {stack.target_model})")
            self._record_endpoints(conf.name, stack.endpoints)
            state = {"ran": 0}

            def one(step: StepPlan) -> dict[str, Any]:
                return self._one_step(conf, stack, step, summary, bar, state)

            if isinstance(self.cfg.load, SweepLoad):
                run_sweep(self.cfg, conf, self.run_dir, one, self.say)
            else:
                for step in steps:
                    one(step)
        finally:
            stack.stop()

    def _one_step(
        self,
        conf: Configuration,
        stack: Stack,
        step: StepPlan,
        summary: RunSummary,
        bar: Any,
        state: dict[str, int],
    ) -> dict[str, Any]:
        """Run one step (or read back a complete one on resume); its step.json."""
        if is_complete(step.dir):
            summary.skipped += 1
            return read_json(step.dir / STEP_FILE)
        if state["ran"] and self.cfg.cooldown_s:
            time.sleep(self.cfg.cooldown_s)  # idle gap so the previous step's queues drain
        state["ran"] += 1
        if bar is not None:
            bar.set_description(f"{conf.name} {step.label} rep={step.rep}")
        dead = stack.dead()
        if dead:
            # a server died in the previous step (which failed and says so): fresh stack for the rest
            self.say(f"[{conf.name}] restarting the stack; dead: {', '.join(dead)}")
            stack.restart()
        info = run_step(StepContext(self.cfg, conf, stack, self.locust_fn), step)
        if info["status"] == "ok":
            summary.ok += 1
        else:
            summary.failed += 1
            summary.failures.append(f"{conf.name} {step.label} rep={step.rep}: {info.get('message', '')}")
        self.say(progress_line(step, info))
        if bar is not None:
            bar.update(1)
        return info
