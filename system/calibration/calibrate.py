"""`expert-router calibrate`: fit a sim profile to measured engine steps and write the calibration report."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from system.calibration.fitting import (
    BOUNDS,
    CLIENT,
    DEFAULT_PARAMS,
    DISCRETE,
    METRICS,
    FitResult,
    error_table,
    simulate_points,
)
from system.calibration.measured import MeasuredSet, PointsError, load_points, points_from_run, save_points
from system.engines.sim.profiles import CALIBRATION_BASES, Profile, UnknownProfileError

LABELS = {"ttft_p50_s": "TTFT p50", "tpot_p50_s": "TPOT p50", "output_tps": "output tok/s"}


def resolve_base(name_or_path: str) -> Profile:
    """A registered profile, a profile JSON file, or a calibration base (profiles.CALIBRATION_BASES)."""
    from system.engines.sim.profilefiles import resolve_profile

    try:
        return resolve_profile(name_or_path)
    except UnknownProfileError:
        if name_or_path in CALIBRATION_BASES:
            return CALIBRATION_BASES[name_or_path]
        raise


def _fmt(v: float, metric: str) -> str:
    if not isinstance(v, int | float) or not math.isfinite(v):
        return "–"
    return f"{v:,.0f}" if metric == "output_tps" else f"{v * 1e3:.2f} ms"


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, int | float) and math.isfinite(v) else "–"


def validate(
    fit: FitResult, mset: MeasuredSet, target_requests: int | None, n_seeds: int = 1
) -> dict[str, Any]:
    """Replay another measured configuration (e.g. `routed`) with the fitted profile, nothing refitted."""
    profs = [fit.profile] * mset.engines if mset.engines > 1 else fit.profile
    wl = mset.workload(target_requests, n_seeds=n_seeds)
    sims = simulate_points(profs, mset.points, wl, fit.client_overhead_s)
    rows, mape = error_table(mset.points, sims)
    return {"config": mset.config, "engines": mset.engines, "source": mset.source, "mape": mape, "rows": rows}


def report_doc(
    fit: FitResult,
    mset: MeasuredSet,
    base: Profile,
    params: list[str],
    validation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    wl = mset.workload(None)
    prompts = [p[0] for p in wl.pairs]
    outs = [p[1] for p in wl.pairs]
    return {
        "profile": fit.profile.name,
        "base": base.name,
        "measured": {
            "source": mset.source,
            "engine": mset.engine,
            "config": mset.config,
            "notes": mset.notes,
            "steps": [asdict(p) for p in mset.points],
        },
        "workload": {
            "requests_sampled": len(wl.pairs),
            "prompt_tokens_mean": sum(prompts) / len(prompts),
            "output_tokens_mean": sum(outs) / len(outs),
            "duration_s": mset.duration_s,
            "warmup_s": mset.warmup_s,
        },
        "fitted": {"params": params, "values": fit.params, "client_overhead_s": fit.client_overhead_s},
        "mape": fit.mape,
        "rows": fit.rows,
        "validation": validation,
        "search": {
            "evals": fit.evals,
            "seconds": round(fit.seconds, 1),
            "fit_mape": fit.fit_mape,
            "history": fit.history,
        },
        "command": " ".join(["expert-router", "calibrate", *sys.argv[2:]])
        if len(sys.argv) > 1 and sys.argv[1] == "calibrate"
        else "",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _table(rows: list[dict[str, Any]], mape: dict[str, float]) -> list[str]:
    head = "| users | " + " | ".join(f"{LABELS[m]} meas. / sim / APE" for m in METRICS) + " |"
    lines = [head, "|---:|" + "---:|" * len(METRICS)]
    for r in rows:
        cells = [
            f"{_fmt(r[f'measured_{m}'], m)} / {_fmt(r[f'sim_{m}'], m)} / {_pct(r[f'ape_{m}'])}"
            for m in METRICS
        ]
        lines.append(f"| {int(r['users'])} | " + " | ".join(cells) + " |")
    lines.append("| **MAPE** | " + " | ".join(f"**{_pct(mape[m])}**" for m in METRICS) + " |")
    lines.append("")
    lines.append(f"Overall MAPE (every measured metric × step): **{_pct(mape['overall'])}**.")
    return lines


def report_markdown(doc: dict[str, Any]) -> str:
    m, wl = doc["measured"], doc["workload"]
    out = [
        f"# Calibration report: `{doc['profile']}`",
        "",
        f"- measured: {m['source']}" + (f" — {m['notes']}" if m["notes"] else ""),
        f"- engine: `{m['engine']}`" if m["engine"] else "- engine: (not recorded)",
        f"- base profile: `{doc['base']}`; fitted: {', '.join(doc['fitted']['params'])}",
        f"- workload: {wl['requests_sampled']} sampled requests, mean prompt "
        f"{wl['prompt_tokens_mean']:.1f} / output {wl['output_tokens_mean']:.1f} tokens; "
        f"steps of {wl['duration_s']:.0f} s, warm-up {wl['warmup_s']:.0f} s",
        f"- search: {doc['search']['evals']} replays of all steps in {doc['search']['seconds']} s "
        f"(search objective {_pct(doc['search']['fit_mape'])}; the figures below are re-simulated whole "
        "steps with seeds the search never saw)",
        "",
        "## Fitted parameters",
        "",
        "| parameter | value |",
        "|---|---:|",
    ]
    for k, v in doc["fitted"]["values"].items():
        out.append(f"| `{k}` | {v:.4g} |")
    if CLIENT not in doc["fitted"]["values"]:
        out.append(f"| `{CLIENT}` (fixed) | {doc['fitted']['client_overhead_s']:.4g} |")
    out += ["", "## Measured vs simulated (fit)", "", *_table(doc["rows"], doc["mape"])]
    val = doc.get("validation")
    if val:
        out += [
            "",
            f"## Validation: configuration `{val['config']}` ({val['engines']} engine(s), not fitted)",
            "",
            *_table(val["rows"], val["mape"]),
        ]
    out += ["", f"Command: `{doc['command']}`" if doc["command"] else "", f"Created {doc['created']}.", ""]
    return "\n".join(out)


def _ints(s: str | None) -> list[int] | None:
    return [int(x) for x in s.split(",") if x.strip()] if s else None


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False), help="Results run dir.")
@click.option("--config", default="single", help="Configuration of --run to fit.")
@click.option(
    "--points", "points_file", type=click.Path(exists=True, dir_okay=False), help="Points CSV/JSON."
)
@click.option("--base", default=None, help="Starting profile: name, profile JSON, or a calibration base.")
@click.option("--name", default=None, help="Name of the fitted profile (default: --out's file stem).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the profile JSON here.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), help="Report dir.")
@click.option(
    "--params", default=",".join(DEFAULT_PARAMS), help=f"Fitted: {', '.join([*BOUNDS, *DISCRETE])}."
)
@click.option(
    "--client-overhead", type=click.FloatRange(min=0.0), default=0.0, help="Fixed when not fitted (s)."
)
@click.option("--seqs-grid", default=None, help="max_num_seqs candidates (comma-separated).")
@click.option(
    "--validate", "validate_config", default=None, help="Also replay this configuration (not fitted)."
)
@click.option(
    "--validate-run",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Run dir holding --validate's configuration (default: --run).",
)
@click.option(
    "--save-points",
    "points_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the points JSON.",
)
@click.option("--max-evals", type=click.IntRange(min=10), default=300, help="Replays per continuous fit.")
@click.option(
    "--target-requests", type=click.IntRange(min=0), default=300, help="Per search replay; 0: whole step."
)
@click.option("--seeds", "n_seeds", type=click.IntRange(min=1), default=4, help="Replays averaged per step.")
@click.option("--random-starts", "n_random", type=click.IntRange(min=0), default=32, help="Random samples.")
@click.option("--starts", "n_starts", type=click.IntRange(min=1), default=3, help="Nelder-Mead runs.")
@click.option("--eval-seeds", type=click.IntRange(min=1), default=4, help="Held-out replays for the report.")
@click.option("--seed", type=int, default=0)
@click.pass_context
def calibrate(
    ctx: click.Context,
    run_dir: str | None,
    config: str,
    points_file: str | None,
    base: str | None,
    name: str | None,
    out: Path | None,
    report_dir: Path | None,
    params: str,
    client_overhead: float,
    seqs_grid: str | None,
    validate_config: str | None,
    validate_run: str | None,
    points_out: Path | None,
    max_evals: int,
    target_requests: int,
    n_seeds: int,
    n_random: int,
    n_starts: int,
    eval_seeds: int,
    seed: int,
) -> None:
    """Fit a sim profile to measured closed-loop steps (docs/CALIBRATION.md).

    Minimises the MAPE of simulated vs measured TTFT p50, TPOT p50 and output tokens/s over the user steps
    (offline replay of the real scheduler + cost model), then prints and writes the report.
    `calibrate reference`: the physical fit to the H100 reference measurements, with leave-one-out errors.
    """
    if ctx.invoked_subcommand is not None:
        return
    if base is None:
        raise click.UsageError("--base is required (or use `expert-router calibrate reference`)")
    from system.calibration.fitting import fit_profile
    from system.engines.sim.profilefiles import ProfileFileError, save_profile

    if (run_dir is None) == (points_file is None):
        raise click.UsageError("give exactly one of --run RUN_DIR or --points FILE")
    validate_run = validate_run or run_dir
    if validate_config and not validate_run:
        raise click.UsageError("--validate needs --run or --validate-run")
    try:
        base_prof = resolve_base(base)
    except (UnknownProfileError, ProfileFileError) as e:
        raise click.BadParameter(
            str(e.args[0] if isinstance(e, KeyError) else e), param_hint="--base"
        ) from None
    names = [p.strip() for p in params.split(",") if p.strip()]
    bad = [p for p in names if p not in BOUNDS and p not in DISCRETE]
    if bad:
        raise click.BadParameter(f"unknown {bad}; known: {[*BOUNDS, *DISCRETE]}", param_hint="--params")
    try:
        mset = points_from_run(run_dir, config) if run_dir else load_points(str(points_file))
        val_set = points_from_run(validate_run, validate_config) if validate_run and validate_config else None
    except PointsError as e:
        raise click.ClickException(str(e)) from None
    if points_out:
        click.echo(f"points: {save_points(mset, points_out)}", err=True)
    target = target_requests or None
    prof_name = name or (out.stem if out else base_prof.name)
    base_prof = base_prof.with_overrides(name=prof_name)
    fit = fit_profile(
        base_prof,
        mset.points,
        mset.workload(target, seed, n_seeds),
        names,
        client_overhead_s=client_overhead,
        engines=mset.engines,
        seqs_grid=_ints(seqs_grid),
        max_evals=max_evals,
        n_random=n_random,
        n_starts=n_starts,
        seed=seed,
        eval_seeds=eval_seeds,
    )
    validation = validate(fit, val_set, None, eval_seeds) if val_set else None
    desc = f"{base_prof.description}; calibrated to {mset.source} (MAPE {100 * fit.mape['overall']:.1f} %)"
    fit.profile = fit.profile.with_overrides(description=desc)
    doc = report_doc(fit, mset, resolve_base(base), names, validation)
    md = report_markdown(doc)
    click.echo(md)
    if out:
        calib = {k: doc[k] for k in ("base", "fitted", "mape", "created", "command")}
        calib["measured"] = mset.source
        save_profile(fit.profile, out, calibration=calib)
        click.echo(f"profile: {out}", err=True)
    rdir = report_dir or (out.parent if out else None)
    if rdir:
        rdir.mkdir(parents=True, exist_ok=True)
        (rdir / f"{prof_name}.report.json").write_text(json.dumps(_json_safe(doc), indent=1) + "\n")
        (rdir / f"{prof_name}.report.md").write_text(md)
        click.echo(f"report: {rdir / (prof_name + '.report.md')}", err=True)


def _json_safe(x: Any) -> Any:
    """NaN/inf -> null, recursively (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


@calibrate.command("reference", context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--profiles-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("system/engines/sim/calibrated"),
    show_default=True,
    help="Write the fitted profiles here.",
)
@click.option("--no-docs", is_flag=True, help="Do not regenerate the tables in docs/.")
def reference_cmd(profiles_dir: Path, no_docs: bool) -> None:
    """Fit transformers-cb-h100-llama-{1b,8b} to results/reference/h100-transformers-serve/ (one shared
    parameter set), print leave-one-step-out / leave-one-run-out errors, write the report JSON, the
    profiles, the co-location predictions and the docs tables generated from them."""
    from system.calibration.colocation import colocation_predictions
    from system.calibration.loo import REPORT, calibrate_reference
    from system.calibration.tables import fit_tables, render_docs

    cmd = "expert-router calibrate reference"
    rep = calibrate_reference(profile_dir=profiles_dir, command=cmd)
    tables = fit_tables(rep)
    for title, key in (
        ("leave-one-step-out", "loso-summary"),
        ("leave-one-run-out", "loro-summary"),
        ("cross-shape transfer", "cross-shape"),
    ):
        click.echo(f"\n{title}\n{tables[key]}")
    click.echo(f"\n{tables['noise']}\nreport: {REPORT} (fit CPU {rep['cpu_s']} s)")
    colocation_predictions(command=cmd)
    if not no_docs:
        render_docs()
