"""Measured closed-loop steps for calibration: from a results run dir, a points CSV or a points JSON."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from system.calibration.fitting import FitWorkload, MeasuredPoint

POINTS_FORMAT = "expert-router-calibration-points/1"
# transformers serve (5.x) ends its streams without `data: [DONE]`; Locust records such a request as failed
# although it carries every token and the usage chunk. Those requests are measurements all the same.
MISSING_DONE = "stream ended without [DONE]"


class PointsError(ValueError):
    """Measured points that cannot be read or used."""


@dataclass
class MeasuredSet:
    """The measured steps of one configuration and the workload that produced them."""

    points: list[MeasuredPoint]
    samples: list[list[int]]  # [prompt, output, count] or [prompt, output, engine, count]
    duration_s: float
    warmup_s: float
    source: str = ""
    engine: str = ""
    config: str = ""
    engines: int = 1
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def workload(self, target_requests: int | None = 400, seed: int = 0, n_seeds: int = 1) -> FitWorkload:
        pairs: list[tuple[int, ...]] = []
        for s in self.samples:
            *item, count = s
            pairs.extend([tuple(int(v) for v in item)] * int(count))
        if not pairs:
            raise PointsError("the measured set has no workload samples")
        return FitWorkload(
            pairs=tuple(pairs),
            duration_s=self.duration_s,
            warmup_s=self.warmup_s,
            seed=seed,
            target_requests=target_requests,
            n_seeds=n_seeds,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": POINTS_FORMAT,
            "source": self.source,
            "engine": self.engine,
            "config": self.config,
            "engines": self.engines,
            "notes": self.notes,
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "points": [_clean(asdict(p)) for p in self.points],
            "samples": self.samples,
            **self.extra,
        }


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """NaN -> null (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def _num(v: Any) -> float:
    if v is None or (isinstance(v, str) and not v.strip()):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        raise PointsError(f"not a number: {v!r}") from None


def _point(d: dict[str, Any], where: str) -> MeasuredPoint:
    if "users" not in d:
        raise PointsError(f"{where}: a point needs 'users'")
    users = int(_num(d["users"]))
    if users < 1:
        raise PointsError(f"{where}: users must be >= 1")
    spawn = _num(d.get("spawn_rate"))
    gap = _num(d.get("client_gap_s"))
    return MeasuredPoint(
        users=users,
        ttft_p50_s=_num(d.get("ttft_p50_s")),
        tpot_p50_s=_num(d.get("tpot_p50_s")),
        output_tps=_num(d.get("output_tps")),
        requests=_num(d.get("requests")),
        client_gap_s=0.0 if math.isnan(gap) else gap,
        spawn_rate=None if math.isnan(spawn) else spawn,
    )


def load_points(path: str | Path) -> MeasuredSet:
    """A points JSON (MeasuredSet.to_json) or CSV: users, ttft_p50_s, tpot_p50_s, output_tps,
    prompt_tokens_mean, output_tokens_mean[, duration_s, warmup_s, spawn_rate, requests, client_gap_s]
    (empty cells: not measured). A CSV's workload is every request at the mean lengths."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PointsError(f"cannot read {path}: {e}") from None
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PointsError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(d, dict) or not isinstance(d.get("points"), list) or not d["points"]:
            raise PointsError(f"{path}: expected an object with a non-empty 'points' list")
        known = {"format", "source", "engine", "config", "engines", "notes", "duration_s", "warmup_s"}
        samples = d.get("samples")
        if not samples and "prompt_tokens_mean" in d:
            samples = [[round(_num(d["prompt_tokens_mean"])), round(_num(d["output_tokens_mean"])), 1]]
        if not samples:
            raise PointsError(f"{path}: needs 'samples' or prompt_tokens_mean + output_tokens_mean")
        return MeasuredSet(
            points=[_point(p, f"{path} point {i}") for i, p in enumerate(d["points"])],
            samples=[[int(v) for v in s] for s in samples],
            duration_s=_num(d.get("duration_s", 30.0)),
            warmup_s=_num(d.get("warmup_s", 5.0)),
            source=str(d.get("source", str(path))),
            engine=str(d.get("engine", "")),
            config=str(d.get("config", "")),
            engines=int(d.get("engines", 1)),
            notes=str(d.get("notes", "")),
            extra={k: v for k, v in d.items() if k not in known | {"points", "samples"}},
        )
    rows = list(csv.DictReader(text.splitlines()))
    if not rows:
        raise PointsError(f"{path}: no rows")
    for col in ("users", "prompt_tokens_mean", "output_tokens_mean"):
        if col not in rows[0]:
            raise PointsError(f"{path}: missing column {col!r}")
    r0 = rows[0]
    return MeasuredSet(
        points=[_point(r, f"{path} row {i + 2}") for i, r in enumerate(rows)],
        samples=[[round(_num(r0["prompt_tokens_mean"])), round(_num(r0["output_tokens_mean"])), 1]],
        duration_s=_num(r0.get("duration_s") or 30.0),
        warmup_s=_num(r0.get("warmup_s") or 5.0),
        source=str(path),
    )


def save_points(mset: MeasuredSet, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(mset.to_json(), indent=1) + "\n")
    return path


def _step_json(step_dir: str) -> dict[str, Any]:
    try:
        return json.loads((Path(step_dir) / "step.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def points_from_run(run_dir: str | Path, config: str, *, accept_missing_done: bool = True) -> MeasuredSet:
    """Summarise one configuration of a results run dir (analysis.load + analysis.metrics.summarize).

    The workload is the (prompt, output[, expert]) lengths of the window's successful requests, pooled over
    steps; `client_gap_s` per step is the median time from a user's response end to its next request.
    """
    import pandas as pd

    from analysis.load import load_configs, load_runs, load_steps
    from analysis.metrics import summarize

    steps = load_steps(run_dir)
    steps = steps[steps["config"] == config]
    if steps.empty:
        raise PointsError(f"{run_dir}: no complete steps of configuration {config!r}")
    df = load_runs(run_dir, steps=steps)
    patched = 0
    if accept_missing_done:
        m = (
            ~df["success"].astype(bool)
            & df["error"].astype(str).str.startswith(MISSING_DONE)
            & pd.to_numeric(df["ttft_s"], errors="coerce").notna()
            & (pd.to_numeric(df["output_tokens"], errors="coerce") > 0)
        )
        patched = int((m & df["in_window"]).sum())
        df.loc[m, "success"] = True
    summary = summarize(df, steps)
    ok = df[df["success"].astype(bool) & df["in_window"]]
    if ok.empty:
        raise PointsError(f"{run_dir}: configuration {config!r} has no successful request in any window")
    cfg = load_configs(run_dir).get(config, {})
    experts = [str(e.get("name")) for e in cfg.get("experts", [])] or sorted(
        ok["expert"].astype(str).unique()
    )
    routed = len(experts) > 1
    keys = ["prompt_tokens", "output_tokens"]
    if routed:
        index = {n: i for i, n in enumerate(experts)}
        ok = ok.assign(engine=ok["expert"].astype(str).map(index))
        ok = ok[ok["engine"].notna()]
        keys.append("engine")
    counts = Counter(tuple(int(v) for v in row) for row in ok[keys].itertuples(index=False))
    points = []
    for _, row in summary.sort_values("users").iterrows():
        users = int(row["users"])
        mine = df[(df["users"] == users)].sort_values("start_ts")
        gaps = []
        for _, g in mine.groupby(["worker_id", "user_id"]):
            gaps.extend((g["start_ts"].to_numpy()[1:] - g["end_ts"].to_numpy()[:-1]).tolist())
        st = steps[steps["users"] == users].iloc[0]
        spawn = _step_json(str(st["step_dir"])).get("spawn_rate")
        points.append(
            MeasuredPoint(
                users=users,
                ttft_p50_s=float(row["ttft_p50_ms"]) / 1e3,
                tpot_p50_s=float(row["tpot_p50_ms"]) / 1e3,
                output_tps=float(row["output_tps"]),
                requests=float(row["requests"]),
                client_gap_s=float(pd.Series(gaps).median()) if gaps else 0.0,
                spawn_rate=float(spawn) if spawn else None,
            )
        )
    engine = cfg.get("experts", [{}])[0].get("engine", {}) if cfg.get("experts") else {}
    notes = f"{patched} in-window request(s) without `data: [DONE]` counted as successful" if patched else ""
    return MeasuredSet(
        points=points,
        samples=[[*k, c] for k, c in sorted(counts.items())],
        duration_s=float((steps["end_ts"] - steps["start_ts"]).mean()),
        warmup_s=float(steps["warmup_s"].mean()),
        source=f"{Path(run_dir).resolve().name} ({run_dir}), configuration {config}",
        engine=json.dumps(engine, sort_keys=True) if engine else "",
        config=config,
        engines=len(experts) if routed else 1,
        notes=notes,
    )
