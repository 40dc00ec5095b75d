"""`expert-router demo`: run the quickstart routed-vs-single experiment on the simulator, then the report."""

from __future__ import annotations

import sys
from pathlib import Path

import click

QUICKSTART = Path(__file__).resolve().parent.parent / "experiments" / "quickstart.yaml"


@click.command("demo")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True),
    default=str(QUICKSTART),
    show_default=True,
    help="Experiment file to run.",
)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Run directory (default: new).")
@click.option("--results-root", default="results", show_default=True)
def demo(config_file: str, out: str | None, results_root: str) -> None:
    """Run CONFIG (the quickstart: 4 simulated experts vs one simulated 70B) and write its report."""
    from analysis.report import write_report
    from system.processes import ServerStartError
    from system.runner.config import load_experiment
    from system.runner.runner import ExperimentRunner, default_run_dir

    cfg = load_experiment(config_file)
    run_dir = Path(out) if out else default_run_dir(cfg, results_root)
    click.echo(f"running {cfg.name}: {[c.name for c in cfg.configurations]} x users {cfg.users} -> {run_dir}")
    try:
        summary = ExperimentRunner(cfg, run_dir).run()
    except ServerStartError as e:
        click.echo(f"error: a server failed to start: {e}", err=True)
        sys.exit(2)
    if summary.ok == 0:
        click.echo(f"error: no step completed ({summary.failed} failed): {summary.failures}", err=True)
        sys.exit(1)
    html = write_report(run_dir)
    click.echo(f"{summary.ok} step(s) ok, {summary.failed} failed")
    click.echo(f"report: {html}")
    click.echo(f"summary: {html.with_suffix('.md')}")
