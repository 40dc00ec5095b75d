"""`expert-router report RUN_DIR [--out DIR]`: write report.html + report.md and print the HTML path."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for report.html, report.md and report_files/ (default: RUN_DIR).",
)
def report(run_dir: Path, out_dir: Path | None) -> None:
    """Write the HTML + Markdown report of RUN_DIR (a run dir, or an experiment dir: all its runs)."""
    from analysis.load import NoCompleteStepsError
    from analysis.report import write_report

    try:
        html = write_report(run_dir, out_dir)
    except NoCompleteStepsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(str(html))
