"""Read a results dir (one run or a whole experiment) into tidy pandas tables keyed by config/users/rep."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from system.records import FIELD_NAMES, RequestRecord, read_records, record_files

# `load_kind` ("users" closed loop | "rate" open loop, requests/s) and `load` (the number) identify a step's
# load (contract 1, docs/CONTRACTS.md); `users` stays for closed-loop steps (NaN for rate steps)
KEYS = ["run_id", "config", "topology", "users", "rep", "load_kind", "load"]
STEP_GLOB = "*/*=*/rep=*"
_LOAD_DIR = re.compile(r"^(users|rate)=([0-9.eE+-]+|inf)$")
_REP = re.compile(r"^rep=(\d+)$")
STEP_COLUMNS = [
    "experiment",
    *KEYS,
    "sweep_phase",
    "max_concurrency",
    "burstiness",
    "status",
    "start_ts",
    "end_ts",
    "warmup_s",
    "window_start",
    "window_end",
    "window_s",
    "step_dir",
    "records_dir",
]


class NoCompleteStepsError(ValueError):
    """The path holds no step whose step.json says status "ok"."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _has_steps(d: Path) -> bool:
    return any(s.is_dir() for s in d.glob(STEP_GLOB))


def find_run_dirs(path: str | Path) -> list[Path]:
    """Run dirs under `path`: the path itself if it is a run dir, else its children that are run dirs."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"results dir not found: {p}")
    if (p / "manifest.json").is_file() or _has_steps(p):
        return [p]
    runs = sorted(c for c in p.iterdir() if c.is_dir() and ((c / "manifest.json").is_file() or _has_steps(c)))
    return runs


def _topology(config: dict[str, Any]) -> str:
    topo = config.get("topology", "")
    if isinstance(topo, dict):  # tolerate {"kind": "routed", ...}
        topo = topo.get("kind", "")
    return str(topo)


def load_configs(path: str | Path) -> dict[str, dict[str, Any]]:
    """config name -> its resolved config.json (the last run wins when an experiment has several)."""
    out: dict[str, dict[str, Any]] = {}
    for run in find_run_dirs(path):
        for cfg in sorted(run.glob("*/config.json")):
            out[cfg.parent.name] = _read_json(cfg)
    return out


def expert_names(config: dict[str, Any]) -> list[str]:
    """Expert names of a configuration, in config order ([] when the config does not list them)."""
    experts = config.get("experts")
    if experts is None and isinstance(config.get("topology"), dict):
        experts = config["topology"].get("experts")
    names = []
    for e in experts or []:
        name = e.get("name") if isinstance(e, dict) else e
        if name:
            names.append(str(name))
    return names


def load_manifest(path: str | Path) -> dict[str, Any]:
    """manifest.json of a run dir (of the newest run of an experiment dir); {} when absent."""
    runs = find_run_dirs(path)
    return _read_json(runs[-1] / "manifest.json") if runs else {}


def _iter_steps(path: str | Path) -> Iterator[dict[str, Any]]:
    for run in find_run_dirs(path):
        configs = {c.parent.name: _read_json(c) for c in run.glob("*/config.json")}
        for d in sorted(run.glob(STEP_GLOB)):
            mu, mr = _LOAD_DIR.match(d.parent.name), _REP.match(d.name)
            if not (d.is_dir() and mu and mr):
                continue
            info = _read_json(d / "step.json")
            # old step.json files have no load_kind: closed loop, load = users
            kind = str(info.get("load_kind") or mu.group(1))
            load = info.get("load")
            if load is None:
                load = info.get("users") if kind == "users" and info.get("users") is not None else mu.group(2)
            users = info.get("users", mu.group(2) if kind == "users" else None)
            config = str(info.get("config") or d.parent.parent.name)
            start = float(info.get("start_ts", float("nan")))
            end = float(info.get("end_ts", float("nan")))
            warmup = float(info.get("warmup_s", 0.0) or 0.0)
            yield {
                "experiment": run.parent.name,
                "run_id": run.name,
                "config": config,
                "topology": str(info.get("topology") or _topology(configs.get(config, {}))),
                "users": float(users) if kind == "users" and users is not None else float("nan"),
                "rep": int(info.get("rep", mr.group(1))),
                "load_kind": kind,
                "load": float(load),
                "sweep_phase": info.get("sweep_phase"),
                "max_concurrency": info.get("max_concurrency"),
                "burstiness": info.get("burstiness"),
                "status": str(info.get("status", "missing")),
                "start_ts": start,
                "end_ts": end,
                "warmup_s": warmup,
                "window_start": start + warmup,
                "window_end": end,
                "window_s": end - (start + warmup),
                "step_dir": str(d),
                "records_dir": str(d / "records"),
            }


def load_steps(path: str | Path, complete_only: bool = True) -> pd.DataFrame:
    """One row per step (run_id, config, topology, users, rep, window ...); only status "ok" by default."""
    df = pd.DataFrame(list(_iter_steps(path)), columns=STEP_COLUMNS)
    if complete_only:
        df = df[df["status"] == "ok"]
    df = df.astype({"users": "float64", "load": "float64"})
    return df.sort_values(["config", "load_kind", "load", "run_id", "rep"]).reset_index(drop=True)


def _with_keys(frame: pd.DataFrame, step: pd.Series, ts_col: str) -> pd.DataFrame:
    for k in KEYS:
        frame[k] = step[k]
    ts = pd.to_numeric(frame[ts_col], errors="coerce") if ts_col in frame else pd.Series(dtype=float)
    frame["in_window"] = (ts >= step["window_start"]) & (ts <= step["window_end"])
    return frame


_KEY_DTYPES = {
    "run_id": "object",
    "config": "object",
    "topology": "object",
    "users": "float64",
    "rep": "int64",
    "load_kind": "object",
    "load": "float64",
}


def _tidy(
    frames: list[pd.DataFrame], columns: list[str], template: pd.DataFrame | None = None
) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        # typed, so boolean masks on an empty table stay masks (an object-dtype mask would select columns)
        empty = pd.DataFrame({k: pd.Series(dtype=t) for k, t in _KEY_DTYPES.items()})
        body = template.iloc[0:0] if template is not None else pd.DataFrame(columns=columns)
        df = pd.concat([empty, body.reset_index(drop=True)], axis=1)
        df["in_window"] = pd.Series(dtype=bool)
        return df
    df = pd.concat(frames, ignore_index=True)
    return df[[*KEYS, *[c for c in df.columns if c not in KEYS]]]


def load_runs(
    path: str | Path, complete_only: bool = True, steps: pd.DataFrame | None = None
) -> pd.DataFrame:
    """All request records under `path` (a run dir or an experiment dir) as one tidy DataFrame.

    Columns: run_id, config, topology, users, rep, then the RequestRecord fields (system.records),
    `source_file` and `in_window` (the request ended inside the step's measurement window
    [start_ts + warmup_s, end_ts]).
    """
    steps = load_steps(path, complete_only) if steps is None else steps
    frames = []
    for _, step in steps.iterrows():
        rdir = step.get("records_dir") or str(Path(step["step_dir"]) / "records")
        recs = normalize_records(read_records(record_files(rdir)))
        frames.append(_with_keys(recs, step, "end_ts"))
    template = normalize_records(pd.DataFrame([{**asdict(RequestRecord()), "source_file": ""}]))
    return _tidy(frames, [*FIELD_NAMES, "source_file"], template)


def _json_list(v: Any) -> list[Any]:
    if isinstance(v, list):
        return v
    if isinstance(v, str) and v.strip():
        try:
            out = json.loads(v)
        except json.JSONDecodeError:
            return []
        return out if isinstance(out, list) else []
    return []


def normalize_records(df: pd.DataFrame) -> pd.DataFrame:
    """Fill the contract-2 fields old record files lack: `outcome` (from `success`) and `chunk_tokens`.

    `outcome` is "ok" | "error" | "cut"; a file without the column gets "ok"/"error" from `success`, and an
    error text starting with "cut" (the runner's "cut: step ended") reads as "cut". `chunk_tokens` becomes a
    list per row ([] when unknown: the analysis then spreads `output_tokens` evenly over the chunks).
    """
    df = df.copy()
    success = df["success"].astype(bool) if "success" in df else pd.Series(False, index=df.index)
    derived = success.map({True: "ok", False: "error"})
    if "error" in df:
        derived = derived.where(~df["error"].astype(str).str.startswith("cut"), "cut")
    if "outcome" in df:
        given = df["outcome"].astype(object).where(df["outcome"].notna(), "").astype(str).str.strip()
        df["outcome"] = given.where(given.isin(["ok", "error", "cut"]), derived)
    else:
        df["outcome"] = derived
    if "chunk_tokens" in df:
        df["chunk_tokens"] = df["chunk_tokens"].map(_json_list)
    else:
        df["chunk_tokens"] = [[] for _ in range(len(df))]
    return df


def _load_csv(path: str | Path, name: str, complete_only: bool, steps: pd.DataFrame | None) -> pd.DataFrame:
    steps = load_steps(path, complete_only) if steps is None else steps
    frames = []
    for _, step in steps.iterrows():
        f = Path(step["step_dir"]) / name
        if not f.is_file() or f.stat().st_size == 0:
            continue
        try:
            # keep_default_na off for text columns would lose NaN values; labels are JSON or "" either way
            df = pd.read_csv(f, on_bad_lines="skip")
        except pd.errors.EmptyDataError:
            continue
        if "ts" not in df.columns:
            continue
        frames.append(_with_keys(df, step, "ts"))
    return _tidy(frames, ["ts"])


def load_gpu(path: str | Path, complete_only: bool = True, steps: pd.DataFrame | None = None) -> pd.DataFrame:
    """NVML samples (gpu.csv) of every step: ts, gpu, util_pct, mem_used_mb, ... plus keys and `in_window`."""
    return _load_csv(path, "gpu.csv", complete_only, steps)


def load_metrics(
    path: str | Path, complete_only: bool = True, steps: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Scraped Prometheus samples (metrics.csv): ts, target, metric, labels, value, keys, `in_window`."""
    return _load_csv(path, "metrics.csv", complete_only, steps)


def load_procs(
    path: str | Path, complete_only: bool = True, steps: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Process samples (procs.csv): ts, name, pid, cpu_percent, rss_mb plus keys and `in_window`."""
    return _load_csv(path, "procs.csv", complete_only, steps)


@dataclass
class RunData:
    """Everything the report needs from one results dir."""

    path: Path
    steps: pd.DataFrame
    records: pd.DataFrame
    gpu: pd.DataFrame
    metrics: pd.DataFrame
    procs: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def run_ids(self) -> list[str]:
        return sorted(self.steps["run_id"].unique())


def is_records_dir(path: str | Path) -> bool:
    """A plain Locust records dir: records-*.csv files (directly or in records/), no results-dir steps."""
    p = Path(path)
    return p.is_dir() and not find_run_dirs(p) and bool(record_files(p))


def records_dir_steps(path: str | Path) -> pd.DataFrame:
    """One synthetic step for a plain records dir (e.g. `locust ... --records-dir DIR`).

    Window: [first send + warm-up, last end]; warm-up = one median E2E of the successful requests (the
    default the runner uses), users = distinct `user_id`s. Config = the dir's name, topology unknown ("").
    """
    p = Path(path)
    recs = normalize_records(read_records(record_files(p)))
    start = float(pd.to_numeric(recs["start_ts"], errors="coerce").min())
    end = float(pd.to_numeric(recs["end_ts"], errors="coerce").max())
    e2e = pd.to_numeric(recs.loc[recs["success"], "e2e_s"], errors="coerce").dropna()
    warmup = float(e2e.median()) if len(e2e) else 0.0
    users = int(recs.loc[recs["user_id"] >= 0, "user_id"].nunique()) if "user_id" in recs else 0
    row = {
        "experiment": p.parent.name,
        "run_id": p.name,
        "config": p.name,
        "topology": "",
        "users": float(users),
        "rep": 0,
        "load_kind": "users",
        "load": float(users),
        "sweep_phase": None,
        "max_concurrency": None,
        "burstiness": None,
        "status": "ok",
        "start_ts": start,
        "end_ts": end,
        "warmup_s": warmup,
        "window_start": start + warmup,
        "window_end": end,
        "window_s": end - (start + warmup),
        "step_dir": str(p),
        "records_dir": str(p),
    }
    return pd.DataFrame([row], columns=STEP_COLUMNS)


def load_all(path: str | Path, complete_only: bool = True) -> RunData:
    """Load every table of a run/experiment dir; NoCompleteStepsError when nothing usable is there.

    A plain Locust records dir (records-*.csv, no step.json) is read as one step (`records_dir_steps`).
    """
    p = Path(path)
    if is_records_dir(p):
        steps, manifest, configs = records_dir_steps(p), {}, {}
    else:
        if not find_run_dirs(p):
            raise NoCompleteStepsError(
                f"{p}: not a results dir (no manifest.json, no <config>/users=N|rate=R/rep=R steps, "
                "no records-*.csv)"
            )
        steps = load_steps(p, complete_only)
        if steps.empty:
            total = len(load_steps(p, complete_only=False))
            raise NoCompleteStepsError(
                f"{p}: no complete steps ({total} step dirs, none with step.json status 'ok'); "
                "was the experiment interrupted before its first step finished?"
            )
        manifest, configs = load_manifest(p), load_configs(p)
    return RunData(
        path=p,
        steps=steps,
        records=load_runs(p, steps=steps),
        gpu=load_gpu(p, steps=steps),
        metrics=load_metrics(p, steps=steps),
        procs=load_procs(p, steps=steps),
        manifest=manifest,
        configs=configs,
    )
