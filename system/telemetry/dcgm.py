"""Cluster GPU telemetry: DCGM-exporter `/metrics` into gpu.csv rows (NVML columns, source "dcgm")."""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import field_validator, model_validator

from system.config import StrictModel
from system.telemetry.base import CsvSampler
from system.telemetry.nvml import GPU_HEADER

# the NVML columns (whatever else nvml.py adds to its header, `source` comes once, right after them)
_BASE = tuple(c for c in GPU_HEADER if c != "source")
# NVLink / PCIe throughput where the exporter has the profiling fields (dcp-metrics-included.csv); NaN else
LINK_COLUMNS = ("pcie_tx_mb_s", "pcie_rx_mb_s", "nvlink_tx_mb_s", "nvlink_rx_mb_s")
DCGM_GPU_HEADER = (*_BASE, "source", *LINK_COLUMNS)
SOURCE = "dcgm"

# DCGM field -> (gpu.csv column, divisor). FB_* are MiB (NVML's mem_*_mb are MiB too), POWER_USAGE is W,
# the PROF_*_BYTES fields are rates in bytes/s.
FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("util_pct", 1.0),
    "DCGM_FI_DEV_FB_USED": ("mem_used_mb", 1.0),
    "DCGM_FI_DEV_FB_FREE": ("_fb_free", 1.0),
    "DCGM_FI_DEV_FB_RESERVED": ("_fb_reserved", 1.0),
    "DCGM_FI_DEV_FB_TOTAL": ("_fb_total", 1.0),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
    "DCGM_FI_DEV_GPU_TEMP": ("temp_c", 1.0),
    "DCGM_FI_PROF_PCIE_TX_BYTES": ("pcie_tx_mb_s", 1e6),
    "DCGM_FI_PROF_PCIE_RX_BYTES": ("pcie_rx_mb_s", 1e6),
    "DCGM_FI_PROF_NVLINK_TX_BYTES": ("nvlink_tx_mb_s", 1e6),
    "DCGM_FI_PROF_NVLINK_RX_BYTES": ("nvlink_rx_mb_s", 1e6),
}
# DCGM's "blank" sentinels (no value for this field on this GPU): DCGM_INT64_BLANK and up, DCGM_FP64_BLANK
_INT64_BLANK = float(0x7FFFFFFFFFFFFFF0)
_FP64_BLANK = 140737488355328.0


class DcgmTarget(StrictModel):
    """One DCGM exporter: `url` of its /metrics; `host` names its GPUs in gpu.csv (default: the exporter's
    `Hostname` label, else the URL's host:port); `gpus` keeps only these GPU indices (default: all)."""

    url: str
    host: str | None = None
    gpus: list[int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_str(cls, v: Any) -> Any:
        return {"url": v} if isinstance(v, str) else v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"DCGM exporter url {v!r} must start with http:// or https://")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and ("/" in v or "," in v or not v.strip()):
            raise ValueError(f"host {v!r} must be a plain name (no '/' or ',')")
        return v


def _value(v: float) -> float:
    return math.nan if (v >= _INT64_BLANK or v == _FP64_BLANK or math.isinf(v)) else v


def parse_dcgm(text: str, target: DcgmTarget) -> list[dict[str, Any]]:
    """One dict per GPU (per MIG instance when the exporter labels them) with gpu.csv's columns, no `ts`."""
    from prometheus_client.parser import text_string_to_metric_families

    fallback_host = urllib.parse.urlsplit(target.url).netloc
    gpus: dict[str, dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            field = FIELDS.get(s.name)
            if field is None or "gpu" not in s.labels:
                continue
            try:
                index = int(s.labels["gpu"])
            except ValueError:
                continue
            if target.gpus is not None and index not in target.gpus:
                continue
            host = target.host or s.labels.get("Hostname") or fallback_host
            gpu_id = f"{host}/{index}"
            if s.labels.get("GPU_I_ID", "") != "":
                gpu_id += f"/mig{s.labels['GPU_I_ID']}"
            row = gpus.setdefault(gpu_id, {"gpu": gpu_id})
            column, divisor = field
            row[column] = _value(float(s.value)) / divisor
    out = []
    for row in gpus.values():
        used, free = row.get("mem_used_mb", math.nan), row.pop("_fb_free", math.nan)
        reserved, total = row.pop("_fb_reserved", 0.0), row.pop("_fb_total", math.nan)
        if math.isnan(total):
            total = used + free + (0.0 if math.isnan(reserved) else reserved)
        row["mem_total_mb"] = total
        out.append(row)
    return out


class DcgmSampler(CsvSampler):
    """Every `interval_s`, GETs each exporter (in parallel) and writes one gpu.csv row per GPU, all rows of
    a tick with the tick's `ts` (so per-time sums across hosts line up), `source` "dcgm".

    An exporter that is down or answers garbage is skipped for that tick and counted in `failures`;
    `note` says why when nothing at all was sampled.
    """

    HEADER = DCGM_GPU_HEADER

    def __init__(
        self,
        path: str | Path,
        targets: Sequence[DcgmTarget],
        interval_s: float = 1.0,
        timeout_s: float = 0.8,
    ) -> None:
        super().__init__(path, interval_s)
        self.targets = list(targets)
        self.timeout_s = timeout_s
        self.failures: dict[str, int] = {}
        self.last_failure: dict[str, str] = {}
        self._pool: ThreadPoolExecutor | None = None

    @property
    def note(self) -> str:
        if self.rows_written or not self.failures:
            return ""
        why = "; ".join(f"{u}: {self.last_failure.get(u, '')}" for u in self.failures)
        return f"dcgm: no GPU samples ({why})"

    def setup(self) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=min(16, max(1, len(self.targets))), thread_name_prefix="dcgm"
        )

    @property
    def active(self) -> bool:
        return bool(self.targets)

    def _fetch(self, target: DcgmTarget) -> list[dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(target.url, timeout=self.timeout_s) as r:
                text = r.read().decode("utf-8", "replace")
            return parse_dcgm(text, target)
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
            self.failures[target.url] = self.failures.get(target.url, 0) + 1
            self.last_failure[target.url] = f"{type(e).__name__}: {e}"
            return None

    def sample(self) -> list[list[Any]]:
        ts = round(time.time(), 3)
        assert self._pool is not None
        rows: list[list[Any]] = []
        for gpus in self._pool.map(self._fetch, self.targets):
            for g in gpus or []:
                g.update(ts=ts, source=SOURCE)
                rows.append([g.get(c, math.nan) for c in self.HEADER])
        return rows

    def teardown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def gpu_sampler(path: str | Path, telemetry: Any, stack: Any) -> CsvSampler:
    """The step's gpu.csv sampler: DCGM exporters when the experiment or configuration names any (the GPUs
    that serve are elsewhere), else NVML on this host (the stack's GPUs, or all visible)."""
    from system.telemetry.nvml import GpuSampler

    targets = [*getattr(telemetry, "dcgm", []), *getattr(stack.conf, "dcgm", [])]
    if targets:
        return DcgmSampler(path, targets, telemetry.gpu_interval_s, telemetry.scrape_timeout_s)
    return GpuSampler(path, telemetry.gpu_interval_s, indices=stack.gpus() or None)
