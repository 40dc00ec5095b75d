"""`expert-router stack up` and `expert-router experiment run|plan|validate`."""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import click

from system.config import ConfigError


def _sigterm_as_interrupt() -> None:
    # SIGTERM (systemd, docker stop, timeout) takes the same clean path as Ctrl-C: every server is stopped
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    # SIGINT too, explicitly: a process started from a shell's background job (`cmd &` without job control)
    # inherits SIGINT as *ignored*, and Python then leaves it ignored, so `kill -INT` would do nothing
    signal.signal(signal.SIGINT, handler)


def _load(path: str):  # -> ExperimentConfig
    from system.runner.config import load_experiment

    try:
        return load_experiment(path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from e


@click.group()
def stack() -> None:
    """Bring one configuration's stack (experts + gateway) up in the foreground."""


@stack.command("up")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--config-name", "-c", default=None, help="Configuration to start (default: the first).")
@click.option(
    "--work-dir", type=click.Path(file_okay=False), default=None, help="Logs + gateway.yaml (default: temp)."
)
@click.option("--gateway-port", type=int, default=None, help="Fixed gateway port (default: a free one).")
def stack_up(
    config_file: str, config_name: str | None, work_dir: str | None, gateway_port: int | None
) -> None:
    """Start the experts and the gateway of CONFIG_FILE, print their URLs, run until Ctrl-C."""
    from system.processes import ServerStartError, free_port
    from system.runner.stack import Stack
    from system.runner.training import ensure_classifier

    cfg = _load(config_file)
    try:
        conf = cfg.select([config_name])[0] if config_name else cfg.configurations[0]
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    wd = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"stack-{conf.name}-"))
    ports = None
    if gateway_port is not None:
        ports = [free_port() for _ in conf.experts] + [gateway_port]
    _sigterm_as_interrupt()
    try:
        clf = ensure_classifier(cfg, conf, wd, echo=lambda s: click.echo(s, err=True))
        st = Stack(conf, work_dir=wd, seed=cfg.seed, classifier_dir=clf, ports=ports)
        click.echo(
            f"starting {conf.name} ({conf.topology}, {len(conf.experts)} expert(s)); logs in {wd / 'logs'}"
        )
        with st:
            for s in st.planned:
                where = "external" if s.launch.external else f"pid {st.procs[s.name].pid}"
                click.echo(f"  {s.role:8s} {s.name:16s} {s.launch.base_url}  ({where})")
            click.echo(f"send requests to {st.target_url}/v1 with model {st.target_model!r}; Ctrl-C stops")
            while True:
                dead = st.dead()
                if dead:
                    for name, why in dead.items():
                        click.echo(f"{name} died: {why}", err=True)
                    sys.exit(1)
                time.sleep(0.5)
    except ServerStartError as e:
        raise click.ClickException(f"stack failed to start: {e}") from e
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


@click.group()
def experiment() -> None:
    """Run experiment sweeps (routed vs single) from a YAML file; see docs/EXPERIMENTS.md."""


@experiment.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Check an experiment file; prints its configurations."""
    cfg = _load(file)
    click.echo(f"{file}: ok, experiment {cfg.name!r}, configurations {[c.name for c in cfg.configurations]}")


@experiment.command("run")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run directory (default: results/<experiment>/<timestamp>). Re-using one resumes it.",
)
@click.option(
    "--resume",
    "resume",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Resume this existing run directory (same as --out DIR; it must exist).",
)
@click.option("--only", multiple=True, help="Run only this configuration (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print the plan (servers, commands, steps) and start nothing.")
@click.option(
    "--results-root", default="results", show_default=True, help="Parent of default run directories."
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--force-resume", is_flag=True, help="Resume even though the config changed since the run began."
)
@click.option(
    "--remote-workers",
    type=click.IntRange(min=1),
    default=None,
    help="Run each step's users on N remote `expert-router loadgen worker` processes (Locust master here).",
)
@click.option(
    "--master-port",
    type=click.IntRange(min=1, max=65534),
    default=5557,
    show_default=True,
    help="Locust master port for --remote-workers; the control endpoint uses the next port.",
)
@click.option(
    "--master-bind-host",
    default="0.0.0.0",
    show_default=True,
    help="Address the master and control endpoint listen on (--remote-workers).",
)
def run(
    file: str,
    out: str | None,
    resume: str | None,
    only: tuple[str, ...],
    dry_run: bool,
    results_root: str,
    no_progress: bool,
    force_resume: bool,
    remote_workers: int | None,
    master_port: int,
    master_bind_host: str,
) -> None:
    """Run every configuration x users step x repetition of FILE; completed steps are skipped on re-run."""
    from system.processes import ServerStartError
    from system.runner.runner import ExperimentRunner, RunError, default_run_dir

    cfg = _load(file)
    if out and resume and Path(out) != Path(resume):
        raise click.ClickException("--out and --resume name different directories; give one")
    if resume and not (Path(resume) / "manifest.json").is_file():
        raise click.ClickException(f"--resume {resume}: no manifest.json there, not a run directory")
    run_dir = Path(resume or out) if (resume or out) else default_run_dir(cfg, results_root)
    try:
        cfg.select(list(only))
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if dry_run:
        from system.runner.plan import describe_plan

        click.echo(describe_plan(cfg, run_dir, list(only) or None))
        return
    _sigterm_as_interrupt()
    remote = None
    if remote_workers:
        from system.runner.remote import RemoteLocust

        if cfg.load.kind != "users":
            raise click.ClickException(
                "--remote-workers runs closed-loop (users) steps only; this experiment's load is "
                f"{cfg.load.kind!r}"
            )

        remote = RemoteLocust(
            remote_workers, master_port, bind_host=master_bind_host, echo=lambda s: click.echo(s, err=True)
        )
    runner = ExperimentRunner(
        cfg,
        run_dir,
        only=list(only) or None,
        progress=not no_progress,
        force_resume=force_resume,
        locust_fn=remote,
    )
    try:
        with remote if remote is not None else contextlib.nullcontext():
            summary = runner.run()
    except ServerStartError as e:
        click.echo(f"error: {e}", err=True)
        click.echo(f"completed steps are kept; fix the problem and resume with --out {run_dir}", err=True)
        sys.exit(2)
    except (RunError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted; resume with: expert-router experiment run {file} --out {run_dir}", err=True
        )
        sys.exit(130)
    click.echo(
        f"{run_dir}: {summary.ok} step(s) ok, {summary.failed} failed, "
        f"{summary.skipped} skipped (already done)"
    )
    for f in summary.failures:
        click.echo(f"  failed: {f}", err=True)
    sys.exit(summary.exit_code)
