"""The single per-request record schema (after vLLM's RequestFuncOutput), its CSV writer and reader.

Written by the Locust load generator (one file per worker), read by `analysis`. Units are in field names.
Wall-clock timestamps (`*_ts`, seconds since the epoch, `time.time()`) align records with telemetry and with
the simulator's ground truth; durations (`*_s`) come from `time.perf_counter()` differences.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

RECORD_FILE_PREFIX = "records-"
RECORD_FILE_SUFFIX = ".csv"
OUTCOME_OK, OUTCOME_ERROR, OUTCOME_CUT = "ok", "error", "cut"
CUT_ERROR = "cut: step ended"


@dataclass
class RequestRecord:
    """One request as the client saw it, plus the server's ground truth when it reports one."""

    request_id: str = ""
    endpoint: str = ""  # "/v1/chat/completions" or "/v1/completions"
    model: str = ""
    stream: bool = True
    # client side, exact (perf_counter deltas; wall clock only for alignment)
    start_ts: float = math.nan  # epoch seconds when the request was sent
    end_ts: float = math.nan  # epoch seconds when the last byte arrived (or the error happened)
    ttft_s: float = math.nan  # send -> first content token byte
    e2e_s: float = math.nan  # send -> last byte
    tpot_s: float = math.nan  # (e2e - ttft) / (output_tokens - 1), vLLM bench's definition
    itl_s: list[float] = field(default_factory=list)  # gaps between successive content chunks
    # tokens in each content chunk, first included (sums to output_tokens); chunk i arrived at
    # start_ts + ttft_s + sum(itl_s[:i])
    chunk_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    tokens_from_usage: bool = False  # False when counted client-side
    # routing (gateway response headers), empty when talking to an engine directly
    expert: str = ""
    cluster: int = -1
    policy: str = ""
    gateway_overhead_ms: float = math.nan
    # outcome
    status: int = 0  # HTTP status; 0 when no response (connection error, timeout)
    success: bool = False
    error: str = ""
    # "ok" | "error" | "cut" (still open when the step ended: end_ts = cut time, tokens received so far)
    outcome: str = ""
    # server ground truth (simulator), epoch seconds; NaN when the server gives none
    gt_arrival_ts: float = math.nan
    gt_first_token_ts: float = math.nan
    gt_last_token_ts: float = math.nan
    gt_output_tokens: int = -1
    # workload and load-generator identity
    workload: str = ""
    label: str = ""
    user_id: int = -1
    worker_id: str = ""
    client_cpu_percent: float = math.nan  # load generator CPU when the request ended (saturation check)
    client_loop_lag_ms: float = math.nan  # gevent loop lag sampled when the request ended

    def finish_derived(self) -> None:
        """Fill TPOT from TTFT/E2E/output tokens (vLLM bench: excludes the first token) and the outcome."""
        if not self.outcome:
            self.outcome = OUTCOME_OK if self.success else OUTCOME_ERROR
        if self.output_tokens > 1 and not math.isnan(self.ttft_s) and not math.isnan(self.e2e_s):
            self.tpot_s = (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


FIELD_NAMES: list[str] = [f.name for f in fields(RequestRecord)]
_STR_DTYPES = {
    "error": str,
    "expert": str,
    "worker_id": str,
    "request_id": str,
    "label": str,
    "outcome": str,
}
_LIST_FIELDS = ("itl_s", "chunk_tokens")


def _encode(name: str, value: Any) -> Any:
    if name == "itl_s":
        # 6 decimals = microsecond resolution, far below any effect we measure
        return json.dumps([round(v, 6) for v in value], separators=(",", ":"))
    if name == "chunk_tokens":
        return json.dumps([int(v) for v in value], separators=(",", ":"))
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


class RecordWriter:
    """Appends records to one CSV file; flushes at most every `flush_every_s` so a crash loses little.

    Thread-safe (Locust users are greenlets, but a flusher thread may call flush()). The header is
    written once; opening an existing file appends, so a restarted worker never truncates data.
    """

    def __init__(self, path: str | Path, flush_every_s: float = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - long-lived
        self._csv = csv.DictWriter(self._fh, fieldnames=FIELD_NAMES)
        if new:
            self._csv.writeheader()
        self._lock = threading.Lock()
        self._flush_every_s = flush_every_s
        self._last_flush = time.monotonic()
        self.count = 0

    def write(self, rec: RequestRecord) -> None:
        row = {k: _encode(k, v) for k, v in asdict(rec).items()}
        with self._lock:
            self._csv.writerow(row)
            self.count += 1
            if time.monotonic() - self._last_flush >= self._flush_every_s:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._last_flush = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._flush_locked()
                self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def record_files(directory: str | Path) -> list[Path]:
    """All record files under `directory` (recursively), sorted for determinism."""
    d = Path(directory)
    return sorted(d.rglob(f"{RECORD_FILE_PREFIX}*{RECORD_FILE_SUFFIX}"))


def read_records(paths: Iterable[str | Path]) -> Any:
    """Read record CSVs into one pandas DataFrame with the schema's dtypes; `itl_s` becomes lists.

    A torn last line (the writer was killed mid-row) is dropped rather than failing the whole read.
    """
    import pandas as pd

    frames = []
    for p in paths:
        raw = Path(p).read_bytes()
        # a row cut in half by a crash has no trailing newline: drop it, keep every whole row
        if raw and not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
        if not raw.strip():
            continue
        try:
            df = pd.read_csv(io.BytesIO(raw), on_bad_lines="skip", dtype=_STR_DTYPES)
        except pd.errors.EmptyDataError:
            continue
        df["source_file"] = str(p)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=[*FIELD_NAMES, "source_file"])
    df = pd.concat(frames, ignore_index=True)
    df = df[df["request_id"].notna()].copy()
    for name in _LIST_FIELDS:  # files written before the field existed
        if name not in df.columns:
            df[name] = "[]"
    if "outcome" not in df.columns:
        df["outcome"] = ""
    for name in ("expert", "policy", "error", "workload", "label", "worker_id", "model", "endpoint"):
        df[name] = df[name].fillna("").astype(str)
    for name in ("stream", "success", "tokens_from_usage"):
        df[name] = df[name].astype(str).str.lower().isin(["true", "1"])
    for name in ("status", "prompt_tokens", "output_tokens", "cluster", "gt_output_tokens", "user_id"):
        df[name] = pd.to_numeric(df[name], errors="coerce").fillna(-1).astype("int64")
    for name in _LIST_FIELDS:
        df[name] = df[name].fillna("[]").map(lambda s: json.loads(s) if isinstance(s, str) and s else [])
    # old files have no outcome: derive it from success
    df["outcome"] = df["outcome"].fillna("").astype(str)
    missing = df["outcome"] == ""
    df.loc[missing, "outcome"] = df.loc[missing, "success"].map({True: OUTCOME_OK, False: OUTCOME_ERROR})
    return df.reset_index(drop=True)
