"""Saturation search per configuration (load kind `sweep`), after GuideLLM's sweep profile.

1. synchronous: one closed-loop user (the unloaded request rate);
2. throughput: a closed-loop probe at `throughput_users` (or an open-loop one at `throughput_rate`), the
   maximum request rate the stack sustains;
3. interpolated: K open-loop rates evenly spaced strictly between the two measured rates, ascending,
   optionally stopping early once throughput plateaus or the SLOs break.

Every probe is an ordinary step (step.json `sweep_phase`), repeated `repetitions` times. The plan and what
happened go to `<config>/sweep.json` (written after each phase), which also makes a resumed run reuse the
rates it planned first.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from system.runner.config import Configuration, ExperimentConfig, SweepLoad, SweepStop
from system.runner.manifest import write_json_atomic
from system.runner.steps import StepPlan, step_plan

SWEEP_FILE = "sweep.json"
RunStep = Callable[[StepPlan], dict[str, Any]]  # runs (or reads back) one step, returns its step.json


def _round(x: float, digits: int = 3) -> float:
    """`digits` significant digits: readable directory names (rate=12.3) without changing the spacing."""
    if x <= 0 or not math.isfinite(x):
        return x
    return float(f"{x:.{digits}g}")


def plan_rates(sync_rps: float, max_rps: float, k: int) -> list[float]:
    """K rates evenly spaced strictly between the synchronous and the maximum rate, ascending, distinct.

    When the throughput probe measured no more than the synchronous step (a stack that does not batch),
    the rates span [sync/2, sync] instead, so the sweep still brackets saturation from below.
    """
    if not (math.isfinite(sync_rps) and sync_rps > 0 and math.isfinite(max_rps) and max_rps > 0):
        return []
    lo, hi = (sync_rps, max_rps) if max_rps > sync_rps else (sync_rps / 2, sync_rps)
    rates = [_round(float(r)) for r in np.linspace(lo, hi, k + 2)[1:-1]]
    return sorted({r for r in rates if r > 0})


def probe_steps(cfg: ExperimentConfig, conf: Configuration, run_dir: Path) -> list[StepPlan]:
    """The synchronous and throughput probes, every repetition."""
    load = cfg.load
    assert isinstance(load, SweepLoad)
    steps = [
        step_plan(conf, run_dir, "users", 1, r, sweep_phase="synchronous") for r in range(cfg.repetitions)
    ]
    for r in range(cfg.repetitions):
        if load.throughput_rate is not None:
            steps.append(
                step_plan(
                    conf,
                    run_dir,
                    "rate",
                    load.throughput_rate,
                    r,
                    max_concurrency=load.max_concurrency,
                    burstiness=load.burstiness,
                    sweep_phase="throughput",
                )
            )
        else:
            steps.append(
                step_plan(conf, run_dir, "users", load.throughput_users, r, sweep_phase="throughput")
            )
    return steps


def rate_steps(cfg: ExperimentConfig, conf: Configuration, run_dir: Path, rate: float) -> list[StepPlan]:
    load = cfg.load
    assert isinstance(load, SweepLoad)
    return [
        step_plan(
            conf,
            run_dir,
            "rate",
            rate,
            r,
            max_concurrency=load.max_concurrency,
            burstiness=load.burstiness,
            sweep_phase="interpolated",
        )
        for r in range(cfg.repetitions)
    ]


def _mean(infos: list[dict[str, Any]], key: str) -> float:
    vals = [
        float(i["figures"][key])
        for i in infos
        if i.get("status") == "ok" and isinstance((i.get("figures") or {}).get(key), int | float)
    ]
    vals = [v for v in vals if math.isfinite(v)]
    return float(np.mean(vals)) if vals else math.nan


def stop_reason(
    stop: SweepStop, prev: tuple[float, float] | None, cur: tuple[float, float], attainment: float
) -> str | None:
    """Why the sweep stops after the rate `cur` = (offered rate, tok/s), given the previous (rate, tok/s)."""
    if stop.slo_attainment is not None and math.isfinite(attainment) and attainment < stop.slo_attainment:
        return f"slo: {attainment:.0%} of requests met the SLOs (< {stop.slo_attainment:.0%})"
    if stop.plateau is not None and prev is not None and prev[0] > 0 and prev[1] > 0:
        load_gain = cur[0] / prev[0] - 1.0
        tput_gain = cur[1] / prev[1] - 1.0
        if load_gain > 0 and tput_gain < stop.plateau * load_gain:
            return (
                f"plateau: throughput +{tput_gain:.1%} for offered load +{load_gain:.1%} "
                f"(< {stop.plateau:g} of it)"
            )
    return None


def read_sweep(conf_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((conf_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError):
        return None


def sweep_done(cfg: ExperimentConfig, conf: Configuration, run_dir: Path) -> bool:
    """True when this configuration's sweep finished (nothing to run on resume)."""
    doc = read_sweep(run_dir / conf.name)
    return bool(doc and doc.get("status") == "done" and doc.get("fingerprint") == cfg.fingerprint())


def run_sweep(
    cfg: ExperimentConfig, conf: Configuration, run_dir: Path, run: RunStep, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Run (or resume) the sweep of one configuration; returns the final sweep.json."""
    load = cfg.load
    assert isinstance(load, SweepLoad)
    conf_dir = run_dir / conf.name
    old = read_sweep(conf_dir) or {}
    doc: dict[str, Any] = {
        "configuration": conf.name,
        "fingerprint": cfg.fingerprint(),
        "sweep": load.model_dump(mode="json"),
        "repetitions": cfg.repetitions,
        "status": "probing",
        "phases": [],
        "rates": [],
        "steps": [],
        "stopped_early": None,
        "updated_ts": time.time(),
    }
    probes = probe_steps(cfg, conf, run_dir)
    infos = {s.dir: run(s) for s in probes}
    for phase in ("synchronous", "throughput"):
        ph = [s for s in probes if s.sweep_phase == phase]
        got = [infos[s.dir] for s in ph]
        doc["phases"].append(
            {
                "phase": phase,
                "load_kind": ph[0].load_kind,
                "load": ph[0].load,
                "dirs": [str(s.dir.relative_to(conf_dir)) for s in ph],
                "req_per_s": _mean(got, "req_per_s"),
                "tok_per_s": _mean(got, "tok_per_s"),
            }
        )
    sync_rps, max_rps = doc["phases"][0]["req_per_s"], doc["phases"][1]["req_per_s"]
    # a resumed sweep keeps the rates it planned first (they are directory names of finished steps)
    same = old.get("fingerprint") == doc["fingerprint"] and old.get("rates")
    doc["rates"] = list(old["rates"]) if same else plan_rates(sync_rps, max_rps, load.rates)
    doc["status"] = "running"
    write_json_atomic(conf_dir / SWEEP_FILE, _safe(doc))
    if not doc["rates"]:
        doc["status"], doc["stopped_early"] = "done", "no rates: a probe measured no completed requests"
        echo(f"[{conf.name}] sweep: {doc['stopped_early']}")
        write_json_atomic(conf_dir / SWEEP_FILE, _safe(doc))
        return doc
    echo(
        f"[{conf.name}] sweep: synchronous {sync_rps:.2f} req/s, throughput {max_rps:.2f} req/s -> rates "
        + ", ".join(f"{r:g}" for r in doc["rates"])
    )
    prev: tuple[float, float] | None = None
    for rate in doc["rates"]:
        got = [run(s) for s in rate_steps(cfg, conf, run_dir, rate)]
        tput, att = _mean(got, "tok_per_s"), _mean(got, "slo_attainment")
        doc["steps"].append({"rate": rate, "tok_per_s": tput, "slo_attainment": att})
        reason = stop_reason(load.stop, prev, (rate, tput), att)
        doc["updated_ts"] = time.time()
        if reason:
            doc["stopped_early"] = f"after rate {rate:g}: {reason}"
            echo(f"[{conf.name}] sweep stops early {doc['stopped_early']}")
            break
        write_json_atomic(conf_dir / SWEEP_FILE, _safe(doc))
        if math.isfinite(tput):
            prev = (rate, tput)
    doc["status"] = "done"
    write_json_atomic(conf_dir / SWEEP_FILE, _safe(doc))
    return doc


def _safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_safe(x) for x in v]
    return v
