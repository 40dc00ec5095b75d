"""`expert-router report RUN_DIR` (report + summary.json + console table) and `expert-router compare A B`."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for report.html, report.md, summary.json and report_files/ (default: RUN_DIR).",
)
def report(run_dir: Path, out_dir: Path | None) -> None:
    """Write the HTML + Markdown report and summary.json of RUN_DIR, print the summary table.

    RUN_DIR is a run dir, an experiment dir (all its runs) or a plain Locust records dir (records-*.csv).
    """
    from analysis.load import NoCompleteStepsError
    from analysis.report import analyze, write_report
    from analysis.summary import console_table

    try:
        a = analyze(run_dir)
        html = write_report(run_dir, out_dir, analysis=a)
        click.echo(console_table(a.verdict))
    except NoCompleteStepsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(str(html))


@click.command("compare")
@click.argument("run_a", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("run_b", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the comparison as JSON to this file.")  # fmt: skip
@click.option(
    "--boot", type=click.IntRange(min=100), default=1000, show_default=True, help="Bootstrap resamples."
)
def compare(run_a: Path, run_b: Path, json_out: Path | None, boot: int) -> None:
    """A/B comparison of two runs (or records dirs): A − B per figure with its 95 % CI and a verdict."""
    from analysis.ab import ab_compare, ab_json, ab_text
    from analysis.load import NoCompleteStepsError

    try:
        result = ab_compare(run_a, run_b, n_boot=boot)
    except NoCompleteStepsError as e:
        raise click.ClickException(str(e)) from e
    click.echo(ab_text(result))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(ab_json(result), indent=2, allow_nan=False) + "\n")
        click.echo(f"wrote {json_out}")
